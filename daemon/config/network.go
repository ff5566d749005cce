package config

import (
	"crypto/x509"
	"fmt"
	"os"
)

// RootCAs is what dpsd trusts for DPS and the hub: the system's roots plus
// the PEM certificates of [network] ca_file, if set.
func (n Network) RootCAs() (*x509.CertPool, error) {
	pool := systemRoots()
	if n.CAFile == "" {
		return pool, nil
	}
	pem, err := os.ReadFile(n.CAFile)
	if err != nil {
		return nil, fmt.Errorf("reading [network] ca_file: %w", err)
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("[network] ca_file %s holds no PEM certificate", n.CAFile)
	}
	return pool, nil
}
