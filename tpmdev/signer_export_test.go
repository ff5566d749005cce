package tpmdev

import (
	"context"

	"github.com/google/go-tpm/tpm2/transport"
)

// wrappedConnector hands operations a wrapped transport.
type wrappedConnector struct {
	connector
	wrap func(transport.TPM) transport.TPM
}

func (w wrappedConnector) begin(ctx context.Context) (transport.TPM, func(), error) {
	t, end, err := w.connector.begin(ctx)
	if err != nil {
		return nil, nil, err
	}
	return w.wrap(t), end, nil
}

// WrapTransport makes every later operation of d go through wrap(t), for
// tests that make a TPM look like another (one without ECC).
func (d *Device) WrapTransport(wrap func(transport.TPM) transport.TPM) {
	d.conn = wrappedConnector{connector: d.conn, wrap: wrap}
}
