package tpmdev_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// costs sums the command times of the operations a benchmark names.
type costs map[string]tpmdev.CommandStat

// measure runs op and adds the commands it sent to c under label/command.
func (c costs) measure(dev *tpmdev.Device, label string, op func()) {
	before := dev.Stats()
	op()
	after := dev.Stats()
	for name, s := range after.ByCommand {
		d := tpmdev.CommandStat{Count: s.Count - before.ByCommand[name].Count, Total: s.Total - before.ByCommand[name].Total}
		if d.Count == 0 {
			continue
		}
		k := label + "/" + name
		c[k] = tpmdev.CommandStat{Count: c[k].Count + d.Count, Total: c[k].Total + d.Total}
	}
}

// report logs every command's mean time and reports the ones the issue
// asks for as benchmark metrics (ms per command).
func (c costs) report(b *testing.B, metrics map[string]string) {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var sb strings.Builder
	for _, k := range keys {
		s := c[k]
		fmt.Fprintf(&sb, "\n  %-40s %6d × %9.3f ms", k, s.Count, ms(s.Total)/float64(s.Count))
	}
	b.Logf("mean time per TPM command:%s", sb.String())
	for k, metric := range metrics {
		if s := c[k]; s.Count > 0 {
			b.ReportMetric(ms(s.Total)/float64(s.Count), metric)
		}
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkProvision is a cold provisioning of the TPM side: EK and SRK
// created, a DPS blob activated and imported, a SAS-sized HMAC, then a
// clear (not timed) so that the next round creates the keys again.
//
//	go test -run '^$' -bench Provision -benchtime 20x ./tpmdev
func BenchmarkProvision(b *testing.B) {
	for _, backend := range []string{"swtpm", "simulator"} {
		b.Run(backend, func(b *testing.B) {
			var dev *tpmdev.Device
			var clear func()
			if backend == "swtpm" {
				var info tpmtest.SwtpmInfo
				dev, info = tpmtest.Swtpm(b)
				clear = func() { tpmtest.ClearSwtpm(b, info) }
			} else {
				dev = tpmtest.Simulator(b)
				clear = func() { tpmtest.ClearSimulator(b, dev) }
			}
			ctx := context.Background()
			c := costs{}
			data := []byte("0ne00000A0A%2Fregistrations%2Frglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq\n1700000000")
			for b.Loop() {
				var ek tpmdev.EK
				var srk tpmdev.SRK
				var err error
				c.measure(dev, "EnsureEK", func() { ek, err = dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, nil, nil) })
				if err != nil {
					b.Fatal(err)
				}
				c.measure(dev, "EnsureSRK", func() { srk, err = dev.EnsureSRK(ctx, nil) })
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				blob := buildBlob(b, ek, srk)
				b.StartTimer()
				var wk *tpmdev.WrappedKey
				c.measure(dev, "ActivateAndImport", func() { wk, err = dev.ActivateAndImport(ctx, blob, nil) })
				if err != nil {
					b.Fatal(err)
				}
				c.measure(dev, "HMAC", func() { _, err = dev.HMAC(ctx, wk, data) })
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				clear()
				b.StartTimer()
			}
			c.report(b, map[string]string{
				"EnsureEK/CreatePrimary":               "EK-CreatePrimary-ms",
				"EnsureSRK/CreatePrimary":              "SRK-CreatePrimary-ms",
				"ActivateAndImport/ActivateCredential": "ActivateCredential-ms",
				"ActivateAndImport/Import":             "Import-ms",
				"HMAC/Load":                            "Load-ms",
				"HMAC/HMAC":                            "HMAC-ms",
			})
		})
	}
}

// BenchmarkSign is the steady state: one SAS signature (Load, HMAC, flush)
// per iteration.
func BenchmarkSign(b *testing.B) {
	dev, _ := tpmtest.Swtpm(b)
	ctx := context.Background()
	ek, err := dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	srk, err := dev.EnsureSRK(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	wk, err := dev.ActivateAndImport(ctx, buildBlob(b, ek, srk), nil)
	if err != nil {
		b.Fatal(err)
	}
	data := []byte("contoso.azure-devices.net%2Fdevices%2Fdev1\n1700000000")
	c := costs{}
	for b.Loop() {
		c.measure(dev, "HMAC", func() { _, err = dev.HMAC(ctx, wk, data) })
		if err != nil {
			b.Fatal(err)
		}
	}
	c.report(b, map[string]string{"HMAC/Load": "Load-ms", "HMAC/HMAC": "HMAC-ms"})
}
