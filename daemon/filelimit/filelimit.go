// Package filelimit reads the files dpsd is given (its record and keys, the
// config, auth and CA files) with a size limit: a file filled with junk
// costs an error that says so, not the device's memory.
package filelimit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrTooLarge: the file is larger than its limit. Nothing of it was kept.
var ErrTooLarge = errors.New("file too large")

// Read returns the contents of path, or an error wrapping ErrTooLarge when
// it holds more than limit bytes. A regular file's size is looked at
// before anything is read; a file that grows meanwhile, or one with no
// size (a pipe), is cut off at limit+1 bytes.
func Read(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadOpen(f, limit)
}

// ReadOpen is Read of a file the caller has opened (to look at it first,
// as the config loader does for its mode).
func ReadOpen(f *os.File, limit int64) ([]byte, error) {
	path := f.Name()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if fi.Mode().IsRegular() {
		if fi.Size() > limit {
			return nil, tooLarge(path, fi.Size(), limit)
		}
		buf.Grow(int(fi.Size()) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(io.LimitReader(f, limit+1)); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(buf.Len()) > limit {
		return nil, tooLarge(path, int64(buf.Len()), limit)
	}
	return buf.Bytes(), nil
}

func tooLarge(path string, size, limit int64) error {
	return fmt.Errorf("%s: %w: %d bytes or more, the limit is %d", path, ErrTooLarge, size, limit)
}
