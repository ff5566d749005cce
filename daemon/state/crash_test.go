package state

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// crashDirEnv, when set, turns the test binary into the writer that
// TestKillDuringWrites kills.
const crashDirEnv = "DPSD_STATE_CRASH_WRITER_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashDirEnv); dir != "" {
		crashWriter(dir)
	}
	os.Exit(m.Run())
}

// crashKeys are the two identities the writer alternates between; large, so
// that a non-atomic write would be caught half done.
var crashKeys = [][]byte{bytes.Repeat([]byte{'a'}, 64<<10), bytes.Repeat([]byte{'b'}, 96<<10)}

// crashWriter switches identities and rewrites the record and owner auth in
// a loop, as re-registrations would, until it is killed.
func crashWriter(dir string) {
	s := Store{Dir: dir}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := 0; ; i++ {
		key := crashKeys[i%2]
		if err := s.StageIdentity(key); err != nil {
			fail(err)
		}
		st := sample()
		st.DeviceID = strings.Repeat("d", i%97) // records of varying length
		if _, err := s.Save(st); err != nil {
			fail(err)
		}
		if err := s.CommitIdentity(); err != nil {
			fail(err)
		}
		if err := s.SaveOwnerAuth(key); err != nil {
			fail(err)
		}
		if i == 0 {
			fmt.Println("ready")
		}
	}
}

// Kill -9 a process that keeps rewriting every file, at random points, and
// check after each kill that every file is whole: the old or the new
// contents, never a mix. (This covers process death; power loss
// additionally relies on the fsyncs, which a test cannot cut.)
func TestKillDuringWrites(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	isKey := func(b []byte) bool { return bytes.Equal(b, crashKeys[0]) || bytes.Equal(b, crashKeys[1]) }
	for round := range 10 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: writer did not start: %q, %v", round, line, err)
		}
		// Random kill points; nothing is asserted about time.
		time.Sleep(time.Duration(rand.IntN(5000)) * time.Microsecond)
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()

		s := Store{Dir: dir}
		if _, found, err := s.Load(); err != nil || !found {
			t.Errorf("round %d: Load = %v, %v", round, found, err)
		}
		if key, err := s.LoadIdentity(); err != nil || !isKey(key) {
			t.Errorf("round %d: identity.key is not a whole key (%d bytes, %v)", round, len(key), err)
		}
		if staged, err := s.LoadStaged(); err != nil || (staged != nil && !isKey(staged)) {
			t.Errorf("round %d: identity.key.new is not a whole key (%d bytes, %v)", round, len(staged), err)
		}
		if auth, err := s.LoadOwnerAuth(); err != nil || !isKey(auth) {
			t.Errorf("round %d: owner.auth is not whole (%d bytes, %v)", round, len(auth), err)
		}
	}
}
