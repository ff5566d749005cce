package config

import (
	"regexp"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/dps"
)

// The syntax checks were regexps; these are those regexps, kept as the
// oracle the hand-written checks must agree with.
var syntaxOracles = []struct {
	name  string
	check func(string) bool
	re    *regexp.Regexp
	max   int // a length limit outside the pattern
}{
	{"id scope", validIDScope, regexp.MustCompile(`^[A-Za-z0-9]{1,64}$`), 0},
	{"registration ID", func(s string) bool { return dps.ValidRegistrationID(s) == nil }, regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9:._-]{0,126}[A-Za-z0-9])?$`), 0},
	{"api-version", validAPIVersion, regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$`), 0},
	{"user or group name", validName, regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$`), 32},
}

func oracle(s string, i int) bool {
	o := syntaxOracles[i]
	return (o.max == 0 || len(s) <= o.max) && o.re.MatchString(s)
}

func TestSyntaxChecks(t *testing.T) {
	inputs := []string{
		"", "a", "_", "$", "-", "0ne00000A0A", "0ne-0000", "a$", "a$$", "_$", "a.b-c_d",
		"dev:01.a_b-c", ":dev", "dev.", "d", "d:", "DEV01",
		"2021-06-01", "2021-06-01-preview", "2021-06-01-preview-preview", "2021-6-01", "2021-06-0a",
		"-preview", "20210-06-01", "2021_06_01", "2021-06-01 ", " 2021-06-01", "2021-06-01\n",
		"a\n", "ä", "dpsd", "Dpsd", "root$", "a b",
		strings.Repeat("a", 32), strings.Repeat("a", 33), strings.Repeat("a", 64), strings.Repeat("a", 65),
		strings.Repeat("a", 128), strings.Repeat("a", 129), "a" + strings.Repeat(".", 126) + "a",
	}
	for i, o := range syntaxOracles {
		for _, s := range inputs {
			if got, want := o.check(s), oracle(s, i); got != want {
				t.Errorf("%s %q: %v, the regexp says %v", o.name, s, got, want)
			}
		}
	}
}

func FuzzSyntaxChecks(f *testing.F) {
	for _, s := range []string{"0ne00000A0A", "dev:01.a_b-c", "2021-06-01-preview", "root$"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for i, o := range syntaxOracles {
			if got, want := o.check(s), oracle(s, i); got != want {
				t.Errorf("%s %q: %v, the regexp says %v", o.name, s, got, want)
			}
		}
	})
}
