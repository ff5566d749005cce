#!/usr/bin/env bash
# Installs the Debian packages the given tool sets need, only when missing.
#   scripts/install-deps.sh test      swtpm, tpm2-tools, libssl-dev, gcc (TPM tests),
#                                     tpm2-openssl, tpm2-abrmd (an openssl client with a TPM key)
#   scripts/install-deps.sh demo      curl (enrolls the demo device)
#   scripts/install-deps.sh deb       lintian, debootstrap (package tests)
#   scripts/install-deps.sh vm        qemu, debootstrap, e2fsprogs (make vm-test)
# Runs apt-get as root (CI and the dev machines are root); otherwise says what
# to install.
set -euo pipefail

want=()
need() { # need COMMAND-OR-FILE PACKAGE
	if [[ $1 == /* ]]; then [[ -e $1 ]] || want+=("$2"); else command -v "$1" >/dev/null 2>&1 || want+=("$2"); fi
}
need_pkg() { # need_pkg PACKAGE: a library in an architecture's directory
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q ' installed$' || want+=("$1")
}

for set in "${@:-test}"; do
	case $set in
	test)
		need swtpm swtpm
		need swtpm_setup swtpm-tools
		need tpm2_clear tpm2-tools
		need /usr/include/openssl/evp.h libssl-dev
		need gcc gcc
		# gcc only recommends the C library's headers; cgo needs them.
		need /usr/include/stdlib.h libc6-dev
		need systemd-analyze systemd
		need man man-db # systemd-analyze verify looks up Documentation=man: pages
		# openssl s_client with the TPM key at cert_key_handle: the OpenSSL 3
		# provider, and a resource manager in front of swtpm (as /dev/tpmrm0
		# is on a device) on a bus of the test's own.
		need openssl openssl
		need_pkg tpm2-openssl
		need /usr/sbin/tpm2-abrmd tpm2-abrmd
		need_pkg libtss2-tcti-tabrmd0
		need dbus-daemon dbus-daemon
		need dbus-send dbus-bin
		;;
	demo)
		need curl curl
		;;
	deb)
		need lintian lintian
		need debootstrap debootstrap
		need dpkg-deb dpkg
		;;
	vm)
		need qemu-system-x86_64 qemu-system-x86
		need debootstrap debootstrap
		need mkfs.ext4 e2fsprogs
		need debugfs e2fsprogs
		need swtpm swtpm
		need swtpm_ioctl swtpm-tools
		need tpm2_clear tpm2-tools
		;;
	*) echo "install-deps: unknown set $set" >&2; exit 2 ;;
	esac
done

((${#want[@]} == 0)) && exit 0
mapfile -t want < <(printf '%s\n' "${want[@]}" | sort -u)
if ((EUID != 0)); then
	echo "install-deps: missing ${want[*]}; run: sudo apt-get install -y ${want[*]}" >&2
	exit 1
fi
echo "install-deps: installing ${want[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends "${want[@]}" >/dev/null ||
	{ apt-get update >/dev/null && apt-get install -y --no-install-recommends "${want[@]}" >/dev/null; }
