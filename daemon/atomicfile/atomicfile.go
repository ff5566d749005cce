// Package atomicfile replaces files so that a crash or a power cut leaves
// either the old or the new contents, never a mix: write PATH.tmp, fsync
// it, rename it over PATH, fsync the directory.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// TmpSuffix names the temporary file beside the target. A file with it is
// never read; the next write removes it.
const TmpSuffix = ".tmp"

// WriteFile replaces path with data, created with mode perm.
func WriteFile(path string, data []byte, perm fs.FileMode) (err error) {
	tmp := path + TmpSuffix
	// A tmp file left by a crash was never renamed, so it holds nothing
	// anyone needs. Removing it first lets O_EXCL guarantee a new file of
	// the given mode (never someone else's file or a symlink).
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing a stale temporary file: %w", err)
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("creating a temporary file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// The umask may have narrowed perm; the caller's mode is the contract.
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("setting the mode of %s: %w", tmp, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flushing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("renaming %s into place: %w", tmp, err)
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir makes the directory's entries (a rename, a removal) durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("flushing %s: %w", dir, err)
	}
	return nil
}
