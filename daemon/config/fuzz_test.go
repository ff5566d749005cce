package config

import (
	"errors"
	"testing"
)

// FuzzLoad feeds a main file and one drop-in to the loader. It must never
// panic; every failure must be an *Error naming one of the two files, and
// every success a config that carries an ID scope. The seed corpus is in
// testdata/fuzz/FuzzLoad (made from testdata/config and the reference).
func FuzzLoad(f *testing.F) {
	const mainName, dropInName = "/etc/dpsd/config.toml", "/etc/dpsd/config.d/50.toml"
	f.Fuzz(func(t *testing.T, main, dropIn []byte) {
		c, err := build(mainName, []source{{name: mainName, data: main}, {name: dropInName, data: dropIn}}, true)
		if err == nil {
			if c.Provisioning.IDScope == "" {
				t.Fatalf("loaded without an ID scope: %+v", c)
			}
			_ = c.ProvisioningFingerprint()
			return
		}
		var errs []error
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			errs = j.Unwrap()
		} else {
			errs = []error{err}
		}
		for _, e := range errs {
			var ce *Error
			if !errors.As(e, &ce) || (ce.File != mainName && ce.File != dropInName) || ce.Msg == "" {
				t.Fatalf("error %q is not an *Error naming a file", e)
			}
		}
	})
}
