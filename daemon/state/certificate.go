package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/dpsd-project/dpsd/daemon/atomicfile"
)

// Certificate is the X.509 hub credential ([hub] auth = "x509") as it is
// on disk: two files switched together, like identity.key, by staging
// (.new) and renaming once the record names them (State.CertificateDigest).
type Certificate struct {
	// Key is the SRK-wrapped TPM signing key (identity.tlskey), opaque here.
	Key []byte
	// Chain is the issued chain, PEM, leaf first (identity.crt).
	Chain []byte
}

// certificateFiles are the files of a Certificate, in the order
// CommitCertificate renames them.
var certificateFiles = [...]string{TLSKeyFile, CertificateFile}

// LoadCertificate returns identity.tlskey and identity.crt; when either is
// missing the error wraps fs.ErrNotExist.
func (s Store) LoadCertificate() (Certificate, error) {
	key, err := s.read(TLSKeyFile, "the certificate's TPM key")
	if err != nil {
		return Certificate{}, err
	}
	chain, err := s.read(CertificateFile, "the certificate chain")
	if err != nil {
		return Certificate{}, err
	}
	return Certificate{Key: key, Chain: chain}, nil
}

// StageCertificate writes c to identity.tlskey.new and identity.crt.new,
// each atomically, leaving the files in use as they are.
func (s Store) StageCertificate(c Certificate) error {
	for i, data := range [][]byte{c.Key, c.Chain} {
		if err := s.writeAtomic(certificateFiles[i]+StagedSuffix, data); err != nil {
			return fmt.Errorf("staging the new certificate: %w", err)
		}
	}
	return nil
}

// LoadStagedCertificate returns the certificate a switch would leave: each
// file's staged version where there is one, else the one in use. staged
// is false (and c empty) when nothing is staged, the normal case.
func (s Store) LoadStagedCertificate() (c Certificate, staged bool, err error) {
	parts := [2][]byte{}
	for i, name := range certificateFiles {
		b, err := s.read(name+StagedSuffix, "the staged certificate")
		switch {
		case err == nil:
			parts[i], staged = b, true
			continue
		case !errors.Is(err, fs.ErrNotExist):
			return Certificate{}, false, err
		}
		if parts[i], err = s.read(name, "the certificate"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return Certificate{}, false, err
		}
	}
	if !staged {
		return Certificate{}, false, nil
	}
	return Certificate{Key: parts[0], Chain: parts[1]}, true, nil
}

// CommitCertificate renames each staged file over the one in use, then
// fsyncs the directory. A crash between the renames leaves one file
// staged: LoadStagedCertificate still sees the whole new certificate, and
// the caller calls CommitCertificate again.
func (s Store) CommitCertificate() error {
	for _, name := range certificateFiles {
		err := os.Rename(s.path(name+StagedSuffix), s.path(name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("switching to the staged certificate: %w", err)
		}
	}
	if err := atomicfile.SyncDir(s.Dir); err != nil {
		return fmt.Errorf("switching to the staged certificate: %w", err)
	}
	return nil
}

// DiscardStagedCertificate removes the staged certificate files, if any.
func (s Store) DiscardStagedCertificate() error {
	for _, name := range certificateFiles {
		if err := os.Remove(s.path(name + StagedSuffix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("discarding the staged certificate: %w", err)
		}
	}
	return nil
}
