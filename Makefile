# dpsd: see README.md. Every target installs what it needs (as root).
SHELL    := /bin/bash
.SHELLFLAGS := -o pipefail -ec
GO       ?= go
MODULE   := github.com/dpsd-project/dpsd
VERSION  := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
LDFLAGS  := -s -w -X $(MODULE)/daemon/version.Version=$(VERSION) \
            -X $(MODULE)/daemon/version.Commit=$(COMMIT) \
            -X $(MODULE)/daemon/version.BuildUnix=$(SOURCE_DATE_EPOCH)
BIN      := bin
# The shipped daemon: pure Go, stripped, and without net/http's bundled
# HTTP/2, which it does not need (536 KB of binary; docs/memory.md).
DPSD_BUILD := CGO_ENABLED=0 $(GO) build -trimpath -tags nethttpomithttp2 -ldflags '$(LDFLAGS)'

export SOURCE_DATE_EPOCH

.PHONY: all build cross test test-deps lint demo deb deb-test vm-test bench fuzz clean

FUZZTIME ?= 5m

all: build

build:
	$(DPSD_BUILD) -o $(BIN)/dpsd ./cmd/dpsd
	$(GO) build -trimpath -o $(BIN)/dpsemu ./cmd/dpsemu

# The shipped daemon must cross-compile without cgo.
cross:
	GOOS=linux GOARCH=amd64 $(DPSD_BUILD) -o $(BIN)/linux-amd64/dpsd ./cmd/dpsd
	GOOS=linux GOARCH=arm64 $(DPSD_BUILD) -o $(BIN)/linux-arm64/dpsd ./cmd/dpsd
	GOOS=linux GOARCH=arm GOARM=7 $(DPSD_BUILD) -o $(BIN)/linux-armhf/dpsd ./cmd/dpsd

# Debian packages for image builders into $(DIST)/: ARCH=amd64|arm64|armhf|all.
# Same commit, same bytes: timestamps come from SOURCE_DATE_EPOCH.
DIST     ?= dist
ARCH     ?= all
DEB_ARCHES := $(if $(filter all,$(ARCH)),amd64 arm64 armhf,$(ARCH))

deb:
	@mkdir -p $(BIN) $(DIST)
	$(GO) build -C packaging -o $(CURDIR)/$(BIN)/dpsd-package .
	for a in $(DEB_ARCHES); do \
		case $$a in amd64|arm64) goarch="GOARCH=$$a" ;; armhf) goarch="GOARCH=arm GOARM=7" ;; \
		*) echo "make deb: unknown ARCH $$a (amd64, arm64, armhf or all)" >&2; exit 2 ;; esac; \
		env GOOS=linux $$goarch $(DPSD_BUILD) -o $(BIN)/linux-$$a/dpsd ./cmd/dpsd; \
		$(BIN)/dpsd-package -arch $$a -bin $(BIN)/linux-$$a/dpsd -version $(VERSION) -commit $(COMMIT) -out $(DIST); \
	done

# Rebuild and compare, lintian, install/upgrade/remove/purge in a Debian chroot (root).
deb-test:
	scripts/install-deps.sh deb
	cd packaging && $(GO) vet ./... && $(GO) test -count=1 -v -timeout 30m ./...

# The field test: the .deb on a Debian guest under QEMU with systemd and the
# kernel's TPM drivers in front of swtpm (root; the image is cached in
# /var/cache/dpsd-vm-test). A second revision of the package is the upgrade.
VMTEST := $(BIN)/vm-test
vm-test: build
	scripts/install-deps.sh test vm
	rm -rf $(VMTEST)
	$(MAKE) deb ARCH=amd64 DIST=$(VMTEST)/1
	$(BIN)/dpsd-package -arch amd64 -bin $(BIN)/linux-amd64/dpsd -version $(VERSION) -commit $(COMMIT) -revision 2 -out $(VMTEST)/2
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/vmtest ./scripts/vmtest
	$(BIN)/vmtest -deb $(VMTEST)/1/dpsd_*.deb -upgrade $(VMTEST)/2/dpsd_*.deb -dpsemu $(BIN)/dpsemu $(VMTESTFLAGS)

# Software TPM + emulator + dpsd, provisioned, then `dpsd status`.
# X509=1: with a certificate DPS issues instead of a SAS key.
demo: build
	scripts/install-deps.sh test demo
	X509=$(X509) scripts/demo.sh

test-deps:
	scripts/install-deps.sh test

# Everything: lint, unit, simulator, swtpm, emulator and end-to-end tests.
test: test-deps lint cross
	@mkdir -p $(BIN)
	CGO_ENABLED=1 $(GO) test -v -count=1 -timeout 30m ./... 2>&1 | tee $(BIN)/test.log | grep -E '^(---|===|ok|FAIL|PASS|panic)' | grep -v '^=== (RUN|PAUSE|CONT|NAME)'
	@scripts/test-summary.sh $(BIN)/test.log

# gofmt, vet, and both modules' go.mod/go.sum exactly as `go mod tidy` makes
# them. go.sum then also lists go-tpm-tools' own requirements (go-sev-guest,
# protobuf, ...), because tpmdev/tpmtest's simulator puts that module in the
# graph: checksums only, which building cmd/dpsd neither downloads nor links
# (go version -m bin/dpsd). A nested module for the simulator would not
# shrink it: the main module's tests import tpmtest.
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	CGO_ENABLED=1 $(GO) vet ./...
	cd packaging && $(GO) vet ./...
	$(GO) mod tidy -diff
	cd packaging && $(GO) mod tidy -diff

# Every fuzz target for FUZZTIME each; crashes stay as seeds under testdata/fuzz.
fuzz: test-deps
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

# The shipped binary on swtpm + dpsemu, cold and warm: a table and dist/bench.json
# (BENCHFLAGS='-runs 3 -idle 10s' for a quick look; go run ./scripts/bench -h).
bench: test-deps build cross
	$(GO) run ./scripts/bench -dpsd $(BIN)/dpsd -dpsemu $(BIN)/dpsemu -cross $(BIN) -out dist/bench.json $(BENCHFLAGS)

clean:
	rm -rf $(BIN) dist
