package state

import (
	"os"
	"path/filepath"
	"testing"
)

// TestCertificateSwitch: a staged certificate is seen whole, even when a
// crash came between the two renames of CommitCertificate, and a second
// commit finishes the switch; a discard leaves the one in use.
func TestCertificateSwitch(t *testing.T) {
	t.Parallel()
	old := Certificate{Key: []byte("old key"), Chain: []byte("old chain")}
	next := Certificate{Key: []byte("new key"), Chain: []byte("new chain")}
	tests := []struct {
		name  string
		crash func(s Store) error // what happened after staging next
		want  Certificate         // LoadStagedCertificate then
	}{
		{"staged only", func(Store) error { return nil }, next},
		{"crash after the key's rename", func(s Store) error {
			return os.Rename(s.path(TLSKeyFile+StagedSuffix), s.path(TLSKeyFile))
		}, next},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := Store{Dir: filepath.Join(t.TempDir(), "state")}
			must(t, s.StageCertificate(old))
			must(t, s.CommitCertificate())
			if _, staged, err := s.LoadStagedCertificate(); err != nil || staged {
				t.Fatalf("after a commit: staged %v, %v", staged, err)
			}
			must(t, s.StageCertificate(next))
			must(t, tt.crash(s))
			got, staged, err := s.LoadStagedCertificate()
			if err != nil || !staged || string(got.Key) != string(tt.want.Key) || string(got.Chain) != string(tt.want.Chain) {
				t.Fatalf("LoadStagedCertificate = %q %q %v %v, want %q %q staged", got.Key, got.Chain, staged, err, tt.want.Key, tt.want.Chain)
			}
			must(t, s.CommitCertificate())
			if c, err := s.LoadCertificate(); err != nil || string(c.Key) != "new key" || string(c.Chain) != "new chain" {
				t.Errorf("after the switch: %q %q %v", c.Key, c.Chain, err)
			}

			must(t, s.StageCertificate(old))
			must(t, s.DiscardStagedCertificate())
			if c, err := s.LoadCertificate(); err != nil || string(c.Key) != "new key" {
				t.Errorf("after a discard: %q %v, want the certificate in use", c.Key, err)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
