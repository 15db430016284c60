package dbtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// RequireServers reports whether DATABUS_REQUIRE_SERVERS=1 is set. When it
// is, a missing server binary fails the test instead of skipping it, so that
// CI cannot go green by silently skipping every database test.
func RequireServers() bool { return os.Getenv("DATABUS_REQUIRE_SERVERS") == "1" }

// Timing knobs. They are generous because CI machines have 2 shared cores
// and several test binaries may start servers at the same time.
const (
	readyTimeout = 60 * time.Second // from exec to a successful ping
	stopTimeout  = 20 * time.Second // from the polite signal to SIGKILL
	pollInterval = 10 * time.Millisecond
	// startAttempts bounds the retries when the free port picked by
	// freePort was taken by someone else before the server bound it.
	startAttempts = 5
)

// mainActive is set by Run; the shared servers need it because only Run can
// stop them when the test binary is done.
var mainActive atomic.Bool

// Main runs the tests of a package that uses this package and exits. Call it
// from TestMain:
//
//	func TestMain(m *testing.M) { dbtest.Main(m) }
//
// It is required by SharedMariaDB and SharedPostgres, and recommended
// otherwise: after the tests it stops the shared servers, kills any server
// whose cleanup did not run, and removes the template data directories.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main without the os.Exit, for a TestMain that has more to do after
// the tests (for example a goroutine leak check). It returns m.Run's code.
func Run(m *testing.M) int {
	mainActive.Store(true)
	code := m.Run()
	shutdown()
	return code
}

// shutdown stops everything this process started. Called by Run once the
// tests are over, so nothing else touches the servers concurrently.
func shutdown() {
	sharedMu.Lock()
	servers := sharedStops
	sharedStops = nil
	sharedMu.Unlock()
	for _, stop := range servers {
		stop()
	}
	for _, p := range liveProcesses() {
		p.kill()
		os.RemoveAll(p.instanceDir)
	}
	templates.mu.Lock()
	for _, dir := range templates.dirs {
		os.RemoveAll(dir)
	}
	templates.dirs = nil
	templates.mu.Unlock()
}

// unavailable skips the test, or fails it when RequireServers is set.
func unavailable(tb testing.TB, msg string) {
	tb.Helper()
	if RequireServers() {
		tb.Fatalf("%s (failing instead of skipping because DATABUS_REQUIRE_SERVERS=1)", msg)
	}
	tb.Skip(msg)
}

// findBinary looks name up in PATH, then in dirs in order. It returns "" when
// there is no executable of that name.
func findBinary(name string, dirs []string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// pickPort is freePort; a variable so the tests can hand out a taken port.
var pickPort = freePort

// freePort returns a loopback TCP port that was free a moment ago. The caller
// must be ready for it to be taken in between (see startAttempts).
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("dbtest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tempPrefix names every directory this package creates under /tmp, so that
// sweepStale can recognise the ones of dead test binaries: the form is
// /tmp/dbtest-<pid>-<kind>-<random>. The paths stay short because a unix
// socket path must fit in 107 bytes.
func tempPrefix(kind string) string { return fmt.Sprintf("dbtest-%d-%s-", os.Getpid(), kind) }

// mkdirTemp creates a private directory for kind under /tmp.
func mkdirTemp(kind string) (string, error) {
	dir, err := os.MkdirTemp("/tmp", tempPrefix(kind))
	if err != nil {
		return "", fmt.Errorf("dbtest: %w", err)
	}
	return dir, nil
}

var sweepOnce sync.Once

// ourKinds are the kinds of directory mkdirTemp is called with.
var ourKinds = map[string]bool{"mdb": true, "mdbtpl": true, "pg": true, "pgtpl": true}

// sweepStale removes the directories left by test binaries that died without
// running their cleanup (a timeout, a crash, go test -c killed). It is the
// best that can be done for those: Go has no exit hook.
func sweepStale() {
	sweepOnce.Do(func() {
		matches, _ := filepath.Glob("/tmp/dbtest-*-*")
		for _, m := range matches {
			rest := strings.TrimPrefix(filepath.Base(m), "dbtest-")
			pidStr, rest, ok := strings.Cut(rest, "-")
			kind, _, _ := strings.Cut(rest, "-")
			if !ok || !ourKinds[kind] {
				continue
			}
			pid, err := strconv.Atoi(pidStr)
			if err != nil || pid <= 0 || pid == os.Getpid() || processAlive(pid) {
				continue
			}
			os.RemoveAll(m)
		}
	})
}

// processAlive reports whether pid is a running (not zombie) process.
func processAlive(pid int) bool {
	info, ok := procStat(pid)
	return ok && info.live
}

// templates holds the initialised data directories, one per server kind,
// created once per test binary and copied (cp -a) for every instance.
var templates struct {
	mu   sync.Mutex
	dirs []string // to remove in shutdown
}

// template is one kind's initialised data directory.
type template struct {
	once sync.Once
	data string // path of the initialised data directory
	err  error
}

// get initialises the template on first use with initFn, which receives a
// fresh directory and returns the data directory inside it.
func (tp *template) get(kind string, initFn func(dir string) (string, error)) (string, error) {
	tp.once.Do(func() {
		sweepStale()
		dir, err := mkdirTemp(kind)
		if err != nil {
			tp.err = err
			return
		}
		templates.mu.Lock()
		templates.dirs = append(templates.dirs, dir)
		templates.mu.Unlock()
		tp.data, tp.err = initFn(dir)
	})
	return tp.data, tp.err
}

// copyDir copies the template data directory src to dst preserving owners
// and modes (cp -a is several times faster than initialising a new one).
func copyDir(src, dst string) error {
	out, err := exec.Command("cp", "-a", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("dbtest: cp -a %s %s: %v: %s", src, dst, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// tail returns at most the last n lines of the file at path, for error
// messages and failure logs.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	const maxBytes = 16 << 10
	if len(b) > maxBytes {
		b = b[len(b)-maxBytes:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// minimalEnv is the environment of every server program: nothing from the
// test's environment (MYSQL_TCP_PORT, PGDATA, PGPORT, LANG...) can change
// how the server behaves.
func minimalEnv() []string {
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "TZ=UTC"}
}

// sharedMu guards the shared servers and sharedStops.
var (
	sharedMu    sync.Mutex
	sharedStops []func() // stop functions of the shared servers, for shutdown
)

// logTailOnFailure registers a cleanup that logs the tail of a server log
// when the test has failed, so a failure shows what the server said.
func logTailOnFailure(tb testing.TB, what, path string) {
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("dbtest: %s log %s (tail):\n%s", what, path, tail(path, 40))
		}
	})
}
