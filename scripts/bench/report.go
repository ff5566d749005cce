package main

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"
)

// report is dist/bench.json: the fields docs/design.md fixes, then the
// spread and the conditions behind them. Times are medians; counts are the
// worst run, since the aims are upper bounds.
type report struct {
	ColdProvisionMSP50 float64          `json:"cold_provision_ms_p50"`
	WarmReadyMSP50     float64          `json:"warm_ready_ms_p50"`
	TPMCommandsCold    int              `json:"tpm_commands_cold"`
	TPMCommandsWarm    int              `json:"tpm_commands_warm"`
	DPSRequestsCold    int              `json:"dps_requests_cold"`
	FilesWrittenWarm   int              `json:"files_written_warm"`
	RSSKiB             int              `json:"rss_kib"`
	BinaryBytes        map[string]int64 `json:"binary_bytes"`

	// ColdOwnMSP50 is the cold provisioning less the Retry-After waits
	// DPS imposed (polls × Retry-After): the daemon's, TPM's and
	// network's own time.
	ColdOwnMSP50    float64 `json:"cold_provision_own_ms_p50"`
	ColdReadyMSP50  float64 `json:"cold_ready_ms_p50"`
	DPSRequestsWarm int     `json:"dps_requests_warm"`
	// The warm start with [hub] verify = false: no MQTT connection.
	WarmNoHubReadyMSP50  float64 `json:"warm_nohub_ready_ms_p50"`
	TPMCommandsWarmNoHub int     `json:"tpm_commands_warm_nohub"`
	// TPMCommandsWarmSettled counts also what follows READY: the
	// ownership read (a warm start whose identity the hub accepted makes
	// no hub check, so no signature).
	TPMCommandsWarmSettled int     `json:"tpm_commands_warm_settled"`
	Runs                   int     `json:"runs"`
	RetryAfterS            int     `json:"dps_retry_after_s"`
	IdleS                  float64 `json:"rss_idle_s"`
	// Spread holds min, p50 and max of every measured series.
	Spread map[string]spread `json:"spread"`
}

type spread struct {
	Min float64 `json:"min"`
	P50 float64 `json:"p50"`
	Max float64 `json:"max"`
}

func spreadOf(xs []float64) spread {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return spread{}
	}
	p50 := s[len(s)/2]
	if len(s)%2 == 0 {
		p50 = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{Min: round1(s[0]), P50: round1(p50), Max: round1(s[len(s)-1])}
}

// num prints whole numbers (counts, bytes) without a fraction.
func num(x float64) string {
	if x == float64(int64(x)) {
		return fmt.Sprintf("%d", int64(x))
	}
	return fmt.Sprintf("%.1f", x)
}

func round1(x float64) float64 { return float64(int64(x*10+0.5)) / 10 }

func series[T any](xs []T, f func(T) float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

func summarize(o options, colds []cold, warms, quiet []warm, sizes map[string]int64) report {
	retry := float64(o.retryAfter * 1000)
	sp := map[string]spread{
		"cold_provision_ms":         spreadOf(series(colds, func(c cold) float64 { return c.provisionMS })),
		"cold_provision_own_ms":     spreadOf(series(colds, func(c cold) float64 { return c.provisionMS - float64(c.dpsPolls)*retry })),
		"cold_ready_ms":             spreadOf(series(colds, func(c cold) float64 { return c.readyMS })),
		"warm_ready_ms":             spreadOf(series(warms, func(w warm) float64 { return w.readyMS })),
		"tpm_commands_cold":         spreadOf(series(colds, func(c cold) float64 { return float64(c.tpmCommands) })),
		"tpm_commands_warm":         spreadOf(series(warms, func(w warm) float64 { return float64(w.tpmCommands) })),
		"dps_requests_cold":         spreadOf(series(colds, func(c cold) float64 { return float64(c.dpsRequests) })),
		"dps_requests_warm":         spreadOf(series(warms, func(w warm) float64 { return float64(w.dpsRequests) })),
		"files_written_warm":        spreadOf(series(warms, func(w warm) float64 { return float64(w.filesWritten) })),
		"warm_nohub_ready_ms":       spreadOf(series(quiet, func(w warm) float64 { return w.readyMS })),
		"tpm_commands_warm_nohub":   spreadOf(series(quiet, func(w warm) float64 { return float64(w.tpmCommands) })),
		"tpm_commands_warm_settled": spreadOf(series(warms, func(w warm) float64 { return float64(w.tpmCommandsSettled) })),
		"dps_requests_warm_nohub":   spreadOf(series(quiet, func(w warm) float64 { return float64(w.dpsRequests) })),
		"files_written_warm_nohub":  spreadOf(series(quiet, func(w warm) float64 { return float64(w.filesWritten) })),
		"rss_kib_cold":              spreadOf(series(colds, func(c cold) float64 { return float64(c.hwmKiB) })),
		"rss_anon_kib_cold":         spreadOf(series(colds, func(c cold) float64 { return float64(c.anonKiB) })),
		"rss_file_kib_cold":         spreadOf(series(colds, func(c cold) float64 { return float64(c.fileKiB) })),
		"rss_kib_warm":              spreadOf(series(warms, func(w warm) float64 { return float64(w.hwmKiB) })),
	}
	rss := int(sp["rss_kib_cold"].Max)
	for _, c := range colds {
		rss = max(rss, c.idleHWMKiB)
	}
	return report{
		ColdProvisionMSP50:     sp["cold_provision_ms"].P50,
		WarmReadyMSP50:         sp["warm_ready_ms"].P50,
		TPMCommandsCold:        int(sp["tpm_commands_cold"].Max),
		TPMCommandsWarm:        int(sp["tpm_commands_warm"].Max),
		DPSRequestsCold:        int(sp["dps_requests_cold"].Max),
		FilesWrittenWarm:       int(sp["files_written_warm"].Max),
		RSSKiB:                 rss,
		BinaryBytes:            sizes,
		ColdOwnMSP50:           sp["cold_provision_own_ms"].P50,
		ColdReadyMSP50:         sp["cold_ready_ms"].P50,
		DPSRequestsWarm:        int(sp["dps_requests_warm"].Max),
		WarmNoHubReadyMSP50:    sp["warm_nohub_ready_ms"].P50,
		TPMCommandsWarmNoHub:   int(sp["tpm_commands_warm_nohub"].Max),
		TPMCommandsWarmSettled: int(sp["tpm_commands_warm_settled"].Max),
		Runs:                   len(colds),
		RetryAfterS:            o.retryAfter,
		IdleS:                  o.idle.Seconds(),
		Spread:                 sp,
	}
}

// aims are issue 8's targets; empty where there is none.
var aims = map[string]struct {
	text string
	ok   func(float64) bool
}{
	"cold_provision_ms":        {"< 1000 (well under)", func(x float64) bool { return x < 1000 }},
	"warm_ready_ms":            {"< 30", func(x float64) bool { return x < 30 }},
	"tpm_commands_warm":        {"<= 4", func(x float64) bool { return x <= 4 }},
	"dps_requests_warm":        {"0", func(x float64) bool { return x == 0 }},
	"files_written_warm":       {"0", func(x float64) bool { return x == 0 }},
	"warm_nohub_ready_ms":      {"< 30", func(x float64) bool { return x < 30 }},
	"tpm_commands_warm_nohub":  {"<= 4", func(x float64) bool { return x <= 4 }},
	"dps_requests_warm_nohub":  {"0", func(x float64) bool { return x == 0 }},
	"files_written_warm_nohub": {"0", func(x float64) bool { return x == 0 }},
	"rss_kib":                  {"< 12288", func(x float64) bool { return x < 12288 }},
	"binary_bytes_arm64":       {"< 9437184", func(x float64) bool { return x < 9<<20 }},
}

func (r report) print(w io.Writer, o options) {
	fmt.Fprintf(w, "dpsd bench: %d devices, each cold, warm, warm with [hub] verify = false; swtpm; dpsemu on loopback\n"+
		"(Retry-After %ds, assigned at the first poll); times from process start; counts to the settled state, worst run judged; idle %v\n\n",
		r.Runs, r.RetryAfterS, o.idle.Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "metric\tp50\tmin\tmax\taim\t\t")
	row := func(name string, judged float64, s spread) {
		aim, verdict := "", ""
		if a, ok := aims[name]; ok {
			aim, verdict = a.text, "ok"
			if !a.ok(judged) {
				verdict = "MISSED"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", name, num(s.P50), num(s.Min), num(s.Max), aim, verdict)
	}
	for _, name := range []string{"cold_provision_ms", "cold_provision_own_ms", "cold_ready_ms", "warm_ready_ms", "warm_nohub_ready_ms"} {
		row(name, r.Spread[name].P50, r.Spread[name])
	}
	for _, name := range []string{"tpm_commands_cold", "tpm_commands_warm", "tpm_commands_warm_nohub", "tpm_commands_warm_settled",
		"dps_requests_cold", "dps_requests_warm", "dps_requests_warm_nohub", "files_written_warm", "files_written_warm_nohub",
		"rss_kib_cold", "rss_anon_kib_cold", "rss_file_kib_cold", "rss_kib_warm"} {
		row(name, r.Spread[name].Max, r.Spread[name])
	}
	one := func(v float64) spread { return spread{Min: v, P50: v, Max: v} }
	row("rss_kib", float64(r.RSSKiB), one(float64(r.RSSKiB)))
	for _, arch := range []string{"amd64", "arm64", "armhf"} {
		row("binary_bytes_"+arch, float64(r.BinaryBytes[arch]), one(float64(r.BinaryBytes[arch])))
	}
	tw.Flush()
}
