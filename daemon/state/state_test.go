package state

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/atomicfile"
)

func sample() Record {
	return Record{
		Version:           "1.2.3",
		RegistrationID:    "rglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq",
		IDScope:           "0ne00000A0A",
		AssignedHub:       "hub1.azure-devices.net",
		DeviceID:          "device-1",
		EKDigest:          "aa",
		SRKName:           "000bbb",
		ProvisionedAt:     time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC),
		Reason:            "first-boot",
		ConfigFingerprint: "cc",
		IdentityDigest:    "dd",
		PendingReason:     "requested",
		HubAccepted: &HubAcceptance{
			KeyDigest: "ee", Hub: "hub1.azure-devices.net", DeviceID: "device-1",
			At: time.Date(2026, 11, 26, 10, 0, 5, 0, time.UTC),
		},
	}
}

// fileID is what a rewrite changes: the inode (rename) and the mtime.
type fileID struct {
	ino   uint64
	mtime time.Time
}

func identify(t *testing.T, path string) fileID {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fileID{ino: fi.Sys().(*syscall.Stat_t).Ino, mtime: fi.ModTime()}
}

func assertMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s: mode %#o, want %#o", path, got, want)
	}
}

// assertNoTemp fails if a write left a temporary file behind.
func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	tmps, err := filepath.Glob(filepath.Join(dir, "*"+atomicfile.TmpSuffix))
	if err != nil {
		t.Fatal(err)
	}
	if len(tmps) > 0 {
		t.Errorf("temporary files left: %v", tmps)
	}
}

func TestLoadMissingIsFresh(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "dpsd")
	st, found, err := Store{Dir: dir}.Load()
	if err != nil || found || !reflect.DeepEqual(st, Record{}) {
		t.Errorf("Load = %+v, %v, %v; want a fresh Record, false, nil", st, found, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load created %s (err %v); it must write nothing", dir, err)
	}
}

func TestSaveLoad(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "dpsd")
	s := Store{Dir: dir}
	in := sample()
	in.ProvisionedAt = in.ProvisionedAt.In(time.FixedZone("CET", 3600))
	cet := in.HubAccepted.At.In(time.FixedZone("CET", 3600))
	in.HubAccepted.At = cet
	written, err := s.Save(in)
	if err != nil || !written {
		t.Fatalf("Save = %v, %v; want true, nil", written, err)
	}
	assertMode(t, dir, 0o700)
	assertMode(t, filepath.Join(dir, StateFile), 0o600)
	assertNoTemp(t, dir)

	got, found, err := s.Load()
	if err != nil || !found {
		t.Fatalf("Load = %v, %v", found, err)
	}
	want := sample()
	want.Format = Format
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load:\n got %+v\nwant %+v", got, want)
	}
	if in.HubAccepted.At != cet {
		t.Errorf("Save changed the caller's record: %v", in.HubAccepted.At)
	}
}

// TestCheckWritable: what would make an identity switch fail after DPS
// assigned the device is found before, and the probe leaves nothing.
func TestCheckWritable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string)
		ok    bool
	}{
		{"empty directory", func(*testing.T, string) {}, true},
		{"provisioned", func(t *testing.T, dir string) {
			if _, err := (Store{Dir: dir}).Save(sample()); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"state.json is a directory", func(t *testing.T, dir string) {
			if err := os.MkdirAll(filepath.Join(dir, StateFile), 0o700); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"identity.key.new is a symlink", func(t *testing.T, dir string) {
			if err := os.Symlink("/dev/null", filepath.Join(dir, StagedIdentityFile)); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"the state dir is a file", func(t *testing.T, dir string) {
			if err := os.Remove(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dir, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "dpsd")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			tc.setup(t, dir)
			err := Store{Dir: dir}.CheckWritable(CommitSpace)
			if (err == nil) != tc.ok {
				t.Fatalf("CheckWritable = %v, want ok %t", err, tc.ok)
			}
			if fi, serr := os.Stat(dir); serr == nil && fi.IsDir() {
				assertNoTemp(t, dir)
			}
		})
	}
}

// A restart of a provisioned device must not touch flash: saving what is
// already on disk writes nothing, however the caller built the value.
func TestSaveUnchangedWritesNothing(t *testing.T) {
	t.Parallel()
	s := Store{Dir: t.TempDir()}
	if _, err := s.Save(sample()); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(s.Dir, StateFile)
	before := identify(t, path)
	loaded, _, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	otherZone := sample()
	otherZone.ProvisionedAt = otherZone.ProvisionedAt.In(time.FixedZone("X", -5*3600))
	for name, st := range map[string]Record{"same value": sample(), "as loaded": loaded, "same instant": otherZone} {
		written, err := s.Save(st)
		if err != nil || written {
			t.Errorf("Save(%s) = %v, %v; want false, nil", name, written, err)
		}
	}
	if after := identify(t, path); after != before {
		t.Errorf("state.json was rewritten: %+v -> %+v", before, after)
	}

	changed := sample()
	changed.SRKName = "000ccc"
	written, err := s.Save(changed)
	if err != nil || !written {
		t.Fatalf("Save(changed) = %v, %v; want true, nil", written, err)
	}
	if identify(t, path).ino == before.ino {
		t.Error("a changed record was written in place, not renamed over the old file")
	}
	if got, _, _ := s.Load(); got.SRKName != "000ccc" {
		t.Errorf("Load after change: SRKName %q", got.SRKName)
	}
}

func TestLoadCorrupt(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"empty":         "",
		"truncated":     `{"format": 1, "registrationId": "dev`,
		"not json":      "\x00\x00\x00\x00",
		"trailing data": `{"format": 1} {"format": 1}`,
		"null":          "null",
		"no format":     `{"registrationId": "device-1"}`,
		"newer format":  `{"format": 2}`,
		"wrong type":    `{"format": 1, "provisionedAt": 5}`,
		"array":         `[1]`,
	}
	for name, content := range tests {
		t.Run(name, func(t *testing.T) {
			s := Store{Dir: t.TempDir()}
			path := filepath.Join(s.Dir, StateFile)
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			st, found, err := s.Load()
			if !errors.Is(err, ErrCorrupt) || found || !reflect.DeepEqual(st, Record{}) {
				t.Errorf("Load = %+v, %v, %v; want a fresh Record, false, ErrCorrupt", st, found, err)
			}
			if err != nil && !bytes.Contains([]byte(err.Error()), []byte(path)) {
				t.Errorf("error %q does not name %s", err, path)
			}
			// The daemon carries on as fresh; its next Save replaces the file.
			if written, err := s.Save(sample()); err != nil || !written {
				t.Errorf("Save over a corrupt file = %v, %v", written, err)
			}
			if _, _, err := s.Load(); err != nil {
				t.Errorf("Load after Save: %v", err)
			}
		})
	}
}

// A crash between creating and renaming a temporary file leaves it behind:
// readers ignore it and the next write of that file replaces it.
func TestStaleTemporaryFiles(t *testing.T) {
	t.Parallel()
	s := Store{Dir: t.TempDir()}
	for _, name := range []string{StateFile, StagedIdentityFile, OwnerAuthFile} {
		if err := os.WriteFile(filepath.Join(s.Dir, name+atomicfile.TmpSuffix), []byte("half a fi"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, found, err := s.Load(); found || err != nil {
		t.Errorf("Load with only a stale temporary file = %v, %v; want fresh", found, err)
	}
	if staged, err := s.LoadStaged(); staged != nil || err != nil {
		t.Errorf("LoadStaged with only a stale temporary file = %q, %v", staged, err)
	}
	if _, err := s.Save(sample()); err != nil {
		t.Fatal(err)
	}
	if err := s.StageIdentity([]byte("key")); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveOwnerAuth([]byte("sealed")); err != nil {
		t.Fatal(err)
	}
	assertNoTemp(t, s.Dir)
	for _, name := range []string{StateFile, StagedIdentityFile, OwnerAuthFile} {
		assertMode(t, filepath.Join(s.Dir, name), 0o600)
	}
}

func TestIdentitySwitch(t *testing.T) {
	t.Parallel()
	s := Store{Dir: filepath.Join(t.TempDir(), "dpsd")}
	step := func(name string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	expect := func(identity, staged string) {
		t.Helper()
		got, err := s.LoadIdentity()
		switch {
		case identity == "" && !errors.Is(err, fs.ErrNotExist):
			t.Errorf("LoadIdentity = %q, %v; want fs.ErrNotExist", got, err)
		case identity != "" && (err != nil || string(got) != identity):
			t.Errorf("LoadIdentity = %q, %v; want %q", got, err, identity)
		}
		gotStaged, err := s.LoadStaged()
		if err != nil || string(gotStaged) != staged || (staged == "") != (gotStaged == nil) {
			t.Errorf("LoadStaged = %q, %v; want %q", gotStaged, err, staged)
		}
	}

	expect("", "")
	if err := s.CommitIdentity(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CommitIdentity with nothing staged = %v; want fs.ErrNotExist", err)
	}
	step("DiscardStaged with nothing staged", s.DiscardStaged())

	step("StageIdentity", s.StageIdentity([]byte("key A")))
	expect("", "key A")
	assertMode(t, s.Dir, 0o700)
	assertMode(t, filepath.Join(s.Dir, StagedIdentityFile), 0o600)
	step("CommitIdentity", s.CommitIdentity())
	expect("key A", "")
	assertMode(t, filepath.Join(s.Dir, IdentityFile), 0o600)

	// A failed re-registration keeps the working key.
	step("StageIdentity", s.StageIdentity([]byte("key B")))
	expect("key A", "key B")
	step("DiscardStaged", s.DiscardStaged())
	expect("key A", "")

	step("StageIdentity", s.StageIdentity([]byte("key C")))
	step("CommitIdentity", s.CommitIdentity())
	expect("key C", "")
	assertNoTemp(t, s.Dir)
}

func TestOwnerAuth(t *testing.T) {
	t.Parallel()
	s := Store{Dir: t.TempDir()}
	if _, err := s.LoadOwnerAuth(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadOwnerAuth with none = %v; want fs.ErrNotExist", err)
	}
	for _, sealed := range [][]byte{[]byte("sealed 1"), []byte("sealed 2, after a clear")} {
		if err := s.SaveOwnerAuth(sealed); err != nil {
			t.Fatal(err)
		}
		got, err := s.LoadOwnerAuth()
		if err != nil || !bytes.Equal(got, sealed) {
			t.Errorf("LoadOwnerAuth = %q, %v; want %q", got, err, sealed)
		}
	}
	assertMode(t, filepath.Join(s.Dir, OwnerAuthFile), 0o600)
}

// A write that fails at the rename leaves neither a temporary file nor a
// changed target behind.
func TestWriteFailsCleanly(t *testing.T) {
	t.Parallel()
	s := Store{Dir: t.TempDir()}
	// A non-empty directory where state.json belongs: rename(2) refuses it.
	blocker := filepath.Join(s.Dir, StateFile, "keep")
	if err := os.MkdirAll(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	if written, err := s.Save(sample()); err == nil || written {
		t.Errorf("Save over a directory = %v, %v; want an error", written, err)
	}
	assertNoTemp(t, s.Dir)
	if _, err := os.Stat(blocker); err != nil {
		t.Errorf("the target was changed: %v", err)
	}
}

// BenchmarkSaveUnchanged measures what a warm start pays to confirm the
// record is current (a read and a compare, no write).
func BenchmarkSaveUnchanged(b *testing.B) {
	s := Store{Dir: b.TempDir()}
	if _, err := s.Save(sample()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if written, err := s.Save(sample()); err != nil || written {
			b.Fatal(written, err)
		}
	}
}
