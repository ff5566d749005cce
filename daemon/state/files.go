package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/dpsd-project/dpsd/daemon/atomicfile"
	"github.com/dpsd-project/dpsd/daemon/filelimit"
)

// StageIdentity writes key (the marshalled SRK-wrapped key; opaque here) to
// identity.key.new, atomically, leaving identity.key as it is.
func (s Store) StageIdentity(key []byte) error {
	if err := s.writeAtomic(StagedIdentityFile, key); err != nil {
		return fmt.Errorf("staging the new identity key: %w", err)
	}
	return nil
}

// CommitIdentity makes the staged key the identity: one rename of
// identity.key.new over identity.key, then a directory fsync. A crash
// before the rename is durable leaves the old identity.key and the staged
// file; after, the new identity.key. With nothing staged the error wraps
// fs.ErrNotExist.
func (s Store) CommitIdentity() error {
	if err := os.Rename(s.path(StagedIdentityFile), s.path(IdentityFile)); err != nil {
		return fmt.Errorf("switching to the staged identity key: %w", err)
	}
	if err := atomicfile.SyncDir(s.Dir); err != nil {
		return fmt.Errorf("switching to the staged identity key: %w", err)
	}
	return nil
}

// DiscardStaged removes identity.key.new, if there is one. No directory
// fsync: should the removal be lost in a crash, the caller finds the staged
// key again at start and discards it again.
func (s Store) DiscardStaged() error {
	if err := os.Remove(s.path(StagedIdentityFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("discarding the staged identity key: %w", err)
	}
	return nil
}

// LoadIdentity returns the contents of identity.key; when there is none the
// error wraps fs.ErrNotExist.
func (s Store) LoadIdentity() ([]byte, error) {
	return s.read(IdentityFile, "the identity key")
}

// LoadStaged returns the contents of identity.key.new, or nil and no error
// when nothing is staged (the normal case).
func (s Store) LoadStaged() ([]byte, error) {
	b, err := s.read(StagedIdentityFile, "the staged identity key")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// SaveOwnerAuth writes the sealed owner auth (opaque here) to owner.auth,
// atomically.
func (s Store) SaveOwnerAuth(sealed []byte) error {
	if err := s.writeAtomic(OwnerAuthFile, sealed); err != nil {
		return fmt.Errorf("saving the sealed owner auth: %w", err)
	}
	return nil
}

// LoadOwnerAuth returns the contents of owner.auth; when there is none the
// error wraps fs.ErrNotExist.
func (s Store) LoadOwnerAuth() ([]byte, error) {
	return s.read(OwnerAuthFile, "the sealed owner auth")
}

// CommitSpace is the room an identity switch needs in Dir: the staged key
// and state.json's temporary copy, each a few hundred bytes, rounded up to
// whole blocks with a margin.
const CommitSpace = 16 << 10

// CheckWritable proves that an identity switch can be written now: the
// files it replaces are regular files (not, say, a directory someone put
// in place of state.json), and a probe file of size bytes can be written,
// flushed and removed. A full or read-only file system fails here rather
// than after DPS has replaced the hub key.
func (s Store) CheckWritable(size int) error {
	for _, name := range []string{StateFile, IdentityFile, StagedIdentityFile, CertificateFile, TLSKeyFile,
		CertificateFile + StagedSuffix, TLSKeyFile + StagedSuffix} {
		fi, err := os.Lstat(s.path(name))
		if err == nil && !fi.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file (%s): move it away", s.path(name), fi.Mode().Type())
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("checking %s: %w", s.path(name), err)
		}
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("creating the state directory: %w", err)
	}
	probe := s.path(".probe" + atomicfile.TmpSuffix)
	f, err := os.OpenFile(probe, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("writing in %s: %w", s.Dir, err)
	}
	defer os.Remove(probe)
	_, err = f.Write(make([]byte, size))
	if err == nil {
		err = f.Sync() // a delayed-allocation file system reports ENOSPC here
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %d bytes in %s: %w", size, s.Dir, err)
	}
	return nil
}

// read returns the contents of the file name; what names it in errors.
func (s Store) read(name, what string) ([]byte, error) {
	b, err := filelimit.Read(s.path(name), maxFileSize)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	return b, nil
}

// writeAtomic replaces the file name in s.Dir with data (mode 0600), such
// that a crash leaves either the old or the new contents. The directory is
// created (mode 0700) if missing.
func (s Store) writeAtomic(name string, data []byte) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("creating the state directory: %w", err)
	}
	return atomicfile.WriteFile(s.path(name), data, 0o600)
}
