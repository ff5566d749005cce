package config

import (
	"crypto/x509"
	"fmt"

	"github.com/dpsd-project/dpsd/daemon/filelimit"
)

// maxCAFile bounds [network] ca_file: a distribution's whole CA bundle is
// about 200 KiB.
const maxCAFile = 4 << 20

// RootCAs is what dpsd trusts for DPS and the hub: the system's roots plus
// the PEM certificates of [network] ca_file, if set.
func (n Network) RootCAs() (*x509.CertPool, error) {
	if n.CAFile == "" {
		return systemRoots(), nil
	}
	// The file first: a bad one costs no parse of the system's roots.
	pem, err := filelimit.Read(n.CAFile, maxCAFile)
	if err != nil {
		return nil, fmt.Errorf("reading [network] ca_file: %w", err)
	}
	pool := systemRoots()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("[network] ca_file %s holds no PEM certificate", n.CAFile)
	}
	return pool, nil
}
