package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// tmpSuffix names the file a write goes to before it is renamed into place.
const tmpSuffix = ".tmp"

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
	if err := syncDir(s.Dir); err != nil {
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

// read returns the contents of the file name; what names it in errors.
func (s Store) read(name, what string) ([]byte, error) {
	b, err := os.ReadFile(s.path(name))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	return b, nil
}

// writeAtomic replaces the file name in s.Dir with data (mode 0600), such
// that a crash leaves either the old or the new contents: write name.tmp,
// fsync it, rename it over name, fsync the directory. The directory is
// created (mode 0700) if missing.
func (s Store) writeAtomic(name string, data []byte) (err error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("creating the state directory: %w", err)
	}
	final := s.path(name)
	tmp := final + tmpSuffix
	// A tmp file left by a crash was never renamed, so it holds nothing
	// anyone needs. Removing it first lets O_EXCL guarantee a new file of
	// mode 0600 (never someone else's file or a symlink).
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing a stale temporary file: %w", err)
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating a temporary file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flushing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("renaming into place: %w", err)
	}
	return syncDir(s.Dir)
}

// syncDir makes the directory's entries (a rename) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening the state directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("flushing the state directory: %w", err)
	}
	return nil
}
