package dbtest

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
)

// recordingTB records Skip and Fatal instead of acting on them, and ends the
// goroutine like the real ones do.
type recordingTB struct {
	testing.TB
	skipped, failed string
}

func (r *recordingTB) Helper() {}
func (r *recordingTB) Skip(args ...any) {
	r.skipped = fmt.Sprint(args...)
	runtime.Goexit()
}
func (r *recordingTB) Fatal(args ...any) {
	r.failed = fmt.Sprint(args...)
	runtime.Goexit()
}
func (r *recordingTB) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls f with a recordingTB on its own goroutine, as the testing
// package would, and returns what it recorded.
func run(t *testing.T, f func(testing.TB)) *recordingTB {
	r := &recordingTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
		r.failed = "returned without skipping or failing"
	}()
	<-done
	return r
}

// TestMissingBinaries checks that without the binaries the tests are skipped
// with the install command, or fail under DATABUS_REQUIRE_SERVERS=1.
func TestMissingBinaries(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	oldMariaDB, oldPostgres := mariadbSearchDirs, postgresBinDirs
	mariadbSearchDirs = []string{"/nonexistent"}
	postgresBinDirs = func() []string { return []string{"/nonexistent"} }
	t.Cleanup(func() { mariadbSearchDirs, postgresBinDirs = oldMariaDB, oldPostgres })

	starts := map[string]func(testing.TB){
		"MariaDB":        func(tb testing.TB) { MariaDB(tb) },
		"SharedMariaDB":  func(tb testing.TB) { SharedMariaDB(tb) },
		"Postgres":       func(tb testing.TB) { Postgres(tb) },
		"SharedPostgres": func(tb testing.TB) { SharedPostgres(tb) },
	}
	install := map[string]string{
		"MariaDB": "apt-get install -y mariadb-server", "SharedMariaDB": "apt-get install -y mariadb-server",
		"Postgres": "apt-get install -y postgresql-15", "SharedPostgres": "apt-get install -y postgresql-15",
	}
	for name, start := range starts {
		t.Setenv("DATABUS_REQUIRE_SERVERS", "")
		r := run(t, start)
		t.Logf("%s skips with: %s", name, r.skipped)
		if r.failed != "" || !strings.Contains(r.skipped, install[name]) {
			t.Errorf("%s without binaries: skipped %q, failed %q; want a skip naming %q", name, r.skipped, r.failed, install[name])
		}
		t.Setenv("DATABUS_REQUIRE_SERVERS", "1")
		r = run(t, start)
		if r.skipped != "" || !strings.Contains(r.failed, install[name]) || !strings.Contains(r.failed, "DATABUS_REQUIRE_SERVERS=1") {
			t.Errorf("%s without binaries, DATABUS_REQUIRE_SERVERS=1: skipped %q, failed %q; want a failure naming %q", name, r.skipped, r.failed, install[name])
		}
	}
}

func TestMissingPostgresUser(t *testing.T) {
	if _, _, _, missing := postgresBinaries(); missing != "" {
		t.Skip(missing)
	}
	old := postgresUser
	postgresUser = "no-such-user-dbtest"
	t.Cleanup(func() { postgresUser = old })
	_, _, _, missing := postgresBinaries()
	if isRoot := missing != ""; !isRoot {
		t.Skip("not running as root: the postgres user is not needed")
	}
	if !strings.Contains(missing, "postgresql-15") {
		t.Errorf("missing user message %q does not name the install command", missing)
	}
}

func TestMergeSettings(t *testing.T) {
	got, err := mergeSettings([]string{"a=1", "b=2"}, []string{"b = 3", "c=x=y"})
	if err != nil {
		t.Fatal(err)
	}
	if want := "a=1 b=3 c=x=y"; strings.Join(got, " ") != want {
		t.Errorf("mergeSettings = %q, want %q", got, want)
	}
	if _, err := mergeSettings(nil, []string{"novalue"}); err == nil {
		t.Error("a setting without = was accepted")
	}
}

// TestPortTakenRetries checks that a server whose port was taken between
// freePort and its bind is started again on another port.
func TestPortTakenRetries(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	old := pickPort
	t.Cleanup(func() { pickPort = old })
	arm := func() {
		first := true
		pickPort = func() (int, error) {
			if first {
				first = false
				return taken, nil
			}
			return freePort()
		}
	}
	t.Run("MariaDB", func(t *testing.T) {
		arm()
		if s := MariaDB(t); s.Port == taken {
			t.Errorf("started on the taken port %d", taken)
		}
	})
	t.Run("Postgres", func(t *testing.T) {
		arm()
		if s := Postgres(t); s.Port == taken {
			t.Errorf("started on the taken port %d", taken)
		}
	})
}
