package dbtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// postgresInstall is the command that provides the PostgreSQL binaries (and
// the postgres user); it is in every skip message.
const postgresInstall = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql-15"

// postgresBinDirs returns the directories searched for initdb and postgres,
// in order: PostgreSQL 15's, then other versions newest first. PATH is
// searched after them (Debian does not put initdb in PATH). A variable so
// the tests can replace it.
var postgresBinDirs = func() []string {
	dirs := []string{"/usr/lib/postgresql/15/bin"}
	others, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(others, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(others[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(others[j])))
		return vi > vj
	})
	for _, d := range others {
		if d != dirs[0] {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// postgresUser is the account initdb and postgres run as when the tests run
// as root (both refuse to run as root). A variable so the tests can change it.
var postgresUser = "postgres"

var postgresTemplate template

// PostgresOption configures a server started by Postgres.
type PostgresOption func(*postgresConfig)

type postgresConfig struct {
	settings []string // name=value, later ones win
}

// PostgresSettings sets server parameters, each "name=value", passed as -c
// flags after the defaults, which they override; for example
// PostgresSettings("synchronous_commit=on") for a latency test.
func PostgresSettings(settings ...string) PostgresOption {
	return func(c *postgresConfig) { c.settings = append(c.settings, settings...) }
}

// postgresDefaults are the settings every server gets unless overridden:
// logical decoding, and fsync and full-page writes off for speed. Committed
// data still survives Kill, because the OS page cache outlives the server.
//
// synchronous_commit stays on, deliberately: with fsync off it costs nothing
// (measured 79 us per single-row commit with it on, 98 us with it off), while
// off would keep commits in shared memory for up to 3 x wal_writer_delay
// (600 ms), so that Kill loses acknowledged commits (a test that writes then
// kills finds nothing) and a walsender sees changes only when the WAL writer
// wakes up, which inflates capture latency.
var postgresDefaults = []string{
	"listen_addresses=127.0.0.1",
	"wal_level=logical",
	"max_replication_slots=10",
	"max_wal_senders=10",
	"fsync=off",
	"full_page_writes=off",
}

// PostgresServer is a private PostgreSQL server started by Postgres or
// SharedPostgres. The superuser postgres needs no password from 127.0.0.1
// (trust authentication), for replication connections too.
//
// Its methods take the test as their first argument and fail it on error.
// See the package documentation for which may run concurrently.
type PostgresServer struct {
	Host string // always 127.0.0.1
	Port int    // TCP port; kept across Stop/Kill and Start
	Dir  string // instance directory: data/, server.log, the unix socket
	Log  string // the server log (its stderr)

	bin      string
	settings []string // merged: one name=value per name
	cred     *syscall.Credential
	lifecycle
}

// postgresBinaries returns the initdb and postgres paths and the credential
// to run them with, or a skip reason.
func postgresBinaries() (initdb, server string, cred *syscall.Credential, missing string) {
	dirs := postgresBinDirs()
	// Search the version directories first: a PATH initdb may be another
	// version than the postgres found below.
	for _, d := range dirs {
		i, s := findBinary(filepath.Join(d, "initdb"), nil), findBinary(filepath.Join(d, "postgres"), nil)
		if i != "" && s != "" {
			initdb, server = i, s
			break
		}
	}
	if initdb == "" {
		initdb, server = findBinary("initdb", nil), findBinary("postgres", nil)
	}
	if initdb == "" || server == "" {
		return "", "", nil, "dbtest: PostgreSQL binaries initdb and postgres not found in " +
			strings.Join(dirs, ", ") + " or PATH; install them with: " + postgresInstall
	}
	if os.Geteuid() != 0 {
		return initdb, server, nil, ""
	}
	u, err := user.Lookup(postgresUser)
	if err != nil {
		return "", "", nil, fmt.Sprintf("dbtest: running as root, PostgreSQL needs the %s user (%v); it comes with: %s",
			postgresUser, err, postgresInstall)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return "", "", nil, fmt.Sprintf("dbtest: user %s has a non-numeric uid/gid %s/%s", postgresUser, u.Uid, u.Gid)
	}
	return initdb, server, &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, ""
}

// Postgres starts a private PostgreSQL server for the test and registers its
// stop and removal with tb.Cleanup. It skips the test when the binaries are
// missing (fails it under DATABUS_REQUIRE_SERVERS=1). The server has
// wal_level=logical, 10 replication slots and WAL senders, and fsync and
// full_page_writes off (see postgresDefaults for why synchronous_commit is
// on), unless PostgresSettings says otherwise. It is ready when Postgres
// returns.
func Postgres(tb testing.TB, opts ...PostgresOption) *PostgresServer {
	tb.Helper()
	initdb, server, cred, missing := postgresBinaries()
	if missing != "" {
		unavailable(tb, missing)
		return nil
	}
	var cfg postgresConfig
	for _, o := range opts {
		o(&cfg)
	}
	s, err := startPostgres(initdb, server, cred, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("dbtest: PostgreSQL log %s (tail):\n%s", s.Log, tail(s.Log, 40))
		}
		if err := s.close(s.Dir); err != nil {
			tb.Error(err)
		}
	})
	return s
}

var sharedPostgres struct {
	once sync.Once
	s    *PostgresServer
	err  error
}

// SharedPostgres returns the test binary's shared PostgreSQL server,
// starting it on first use, for packages that give each test its own
// database (see DB). TestMain must call Main or Run, which stop it. Tests
// must not Stop, Start, Restart or Kill it: use Postgres for those.
func SharedPostgres(tb testing.TB) *PostgresServer {
	tb.Helper()
	initdb, server, cred, missing := postgresBinaries()
	if missing != "" {
		unavailable(tb, missing)
		return nil
	}
	if !mainActive.Load() {
		tb.Fatal("dbtest: SharedPostgres needs TestMain to call dbtest.Main(m) or dbtest.Run(m), which stop the shared server")
	}
	sharedPostgres.once.Do(func() {
		s, err := startPostgres(initdb, server, cred, postgresConfig{})
		if err != nil {
			sharedPostgres.err = err
			return
		}
		s.shared = true
		sharedPostgres.s = s
		sharedMu.Lock()
		sharedStops = append(sharedStops, func() { _ = s.close(s.Dir) })
		sharedMu.Unlock()
	})
	if sharedPostgres.err != nil {
		tb.Fatal(sharedPostgres.err)
	}
	logTailOnFailure(tb, "PostgreSQL", sharedPostgres.s.Log)
	return sharedPostgres.s
}

// chownDir gives dir to the server's user when it runs as another one.
func chownDir(dir string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("dbtest: %w", err)
	}
	return nil
}

// initPostgresTemplate runs initdb into dir/data as the server's user.
func initPostgresTemplate(initdb string, cred *syscall.Credential) func(dir string) (string, error) {
	return func(dir string) (string, error) {
		if err := chownDir(dir, cred); err != nil {
			return "", err
		}
		data := dir + "/data"
		args := []string{"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"}
		logPath := dir + "/initdb.log"
		p, err := startProcess(initdb, args, dir, logPath, dir, cred)
		if err != nil {
			return "", err
		}
		timer := time.NewTimer(readyTimeout)
		defer timer.Stop()
		select {
		case <-p.done:
		case <-timer.C:
			p.kill()
			return "", fmt.Errorf("dbtest: initdb did not finish within %v; log tail:\n%s", readyTimeout, tail(logPath, 30))
		}
		if p.waitErr != nil {
			return "", fmt.Errorf("dbtest: initdb: %v; log tail:\n%s", p.waitErr, tail(logPath, 30))
		}
		return data, nil
	}
}

// mergeSettings returns defaults overridden by extra, one name=value per
// name, in first-appearance order.
func mergeSettings(defaults, extra []string) ([]string, error) {
	var order []string
	values := map[string]string{}
	for _, kv := range append(append([]string(nil), defaults...), extra...) {
		name, value, ok := strings.Cut(kv, "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return nil, fmt.Errorf("dbtest: PostgreSQL setting %q is not name=value", kv)
		}
		if _, seen := values[name]; !seen {
			order = append(order, name)
		}
		values[name] = strings.TrimSpace(value)
	}
	out := make([]string, len(order))
	for i, name := range order {
		out[i] = name + "=" + values[name]
	}
	return out, nil
}

// startPostgres copies the template and starts a server on a free port,
// retrying with another port when the chosen one was taken meanwhile.
func startPostgres(initdb, server string, cred *syscall.Credential, cfg postgresConfig) (*PostgresServer, error) {
	settings, err := mergeSettings(postgresDefaults, cfg.settings)
	if err != nil {
		return nil, err
	}
	tpl, err := postgresTemplate.get("pgtpl", initPostgresTemplate(initdb, cred))
	if err != nil {
		return nil, err
	}
	dir, err := mkdirTemp("pg")
	if err != nil {
		return nil, err
	}
	s := &PostgresServer{
		Host:     "127.0.0.1",
		Dir:      dir,
		Log:      dir + "/server.log",
		bin:      server,
		settings: settings,
		cred:     cred,
	}
	s.lifecycle = lifecycle{kind: "PostgreSQL", ctor: "dbtest.Postgres(t)", start: s.start, stop: stopPostgresProcess}
	if err := chownDir(dir, cred); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := copyDir(tpl, dir+"/data"); err != nil { // cp -a keeps the postgres ownership
		os.RemoveAll(dir)
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		if s.Port, err = pickPort(); err != nil {
			break
		}
		var portTaken bool
		if portTaken, err = s.start(); err == nil || !portTaken || attempt == startAttempts {
			break
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// args is the postgres command line: the server is started directly, not
// through pg_ctl, so that it is our child and we own its process group.
func (s *PostgresServer) args() []string {
	a := []string{"-D", s.Dir + "/data", "-p", strconv.Itoa(s.Port), "-k", s.Dir}
	for _, kv := range s.settings {
		a = append(a, "-c", kv)
	}
	return a
}

// start starts the server process and waits until it accepts a connection.
// On failure the process is killed, portTaken tells whether the port was in
// use, and the error carries the tail of the log.
func (s *PostgresServer) start() (portTaken bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return false, errors.New("dbtest: PostgreSQL server is already running")
	}
	offset := fileSize(s.Log)
	p, err := startProcess(s.bin, s.args(), s.Dir, s.Log, s.Dir, s.cred)
	if err != nil {
		return false, err
	}
	if err := s.waitReady(p); err != nil {
		p.kill()
		fresh := readFrom(s.Log, offset)
		return strings.Contains(fresh, "Address already in use"),
			fmt.Errorf("dbtest: PostgreSQL on port %d: %w; log tail:\n%s", s.Port, err, tail(s.Log, 30))
	}
	s.proc = p
	return false, nil
}

// waitReady connects until the server accepts, the process exits, or
// readyTimeout passes.
func (s *PostgresServer) waitReady(p *process) error {
	cfg, err := pgx.ParseConfig(s.ConnString("postgres"))
	if err != nil {
		return err
	}
	cfg.ConnectTimeout = 2 * time.Second
	deadline := time.Now().Add(readyTimeout)
	for {
		if p.exited() {
			return fmt.Errorf("server exited while starting: %v", p.waitErr)
		}
		ctx, cancel := p.attemptContext(3 * time.Second)
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			err = conn.Ping(ctx)
			conn.Close(ctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code != "57P03" { // 57P03: the database system is starting up
			return fmt.Errorf("server is up but refuses the postgres user: %w", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %v: %w", readyTimeout, err)
		}
		time.Sleep(pollInterval)
	}
}

// stopPostgresProcess shuts p down with SIGINT to the postmaster alone: PostgreSQL's
// "fast" shutdown. (SIGTERM is a "smart" shutdown that waits for clients, and
// signalling the whole group would hit the auxiliary processes directly.)
func stopPostgresProcess(p *process) error { return p.stop(syscall.SIGINT, false) }

// ConnString is a connection URL for the superuser postgres (no password)
// on database db ("" means postgres): postgres://postgres@127.0.0.1:port/db?sslmode=disable.
// Add replication=database for a logical replication connection.
func (s *PostgresServer) ConnString(db string) string { return s.UserConnString("postgres", "", db) }

// UserConnString is ConnString for another role.
func (s *PostgresServer) UserConnString(user, password, db string) string {
	if db == "" {
		db = "postgres"
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(user),
		Host:     net.JoinHostPort(s.Host, strconv.Itoa(s.Port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	if password != "" {
		u.User = url.UserPassword(user, password)
	}
	return u.String()
}

// DB creates database db if it does not exist and returns a pool of
// superuser connections to it ("" means postgres), closed when the test
// ends.
//
// The pool uses this package's small database/sql driver over pgx (see
// pgsql.go): query results are int64, float64, bool, []byte (bytea) and
// time.Time for those types, and the server's text form as a string for
// every other type.
func (s *PostgresServer) DB(tb testing.TB, db string) *sql.DB {
	tb.Helper()
	if db == "" {
		db = "postgres"
	}
	if err := s.createDatabase(db); err != nil {
		tb.Fatal(err)
	}
	pool := sql.OpenDB(&pgConnector{connString: s.ConnString(db)})
	tb.Cleanup(func() { pool.Close() })
	if err := pool.PingContext(context.Background()); err != nil {
		tb.Fatalf("dbtest: connect to PostgreSQL database %q: %v", db, err)
	}
	return pool
}

// createDatabase creates db unless it exists; a concurrent creation is fine.
func (s *PostgresServer) createDatabase(db string) error {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.ConnString("postgres"))
	if err != nil {
		return fmt.Errorf("dbtest: connect to PostgreSQL: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", db).Scan(&exists); err != nil {
		return fmt.Errorf("dbtest: look up database %q: %w", db, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize())
	var pgErr *pgconn.PgError
	if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42P04") { // 42P04: duplicate_database
		return fmt.Errorf("dbtest: create database %q: %w", db, err)
	}
	return nil
}

// Exec runs the statements in order as the superuser on one connection to
// database postgres, and fails the test on the first error. A statement may
// hold several commands separated by semicolons (simple protocol); CREATE
// DATABASE must be alone in its statement.
func (s *PostgresServer) Exec(tb testing.TB, stmts ...string) {
	tb.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.ConnString("postgres"))
	if err != nil {
		tb.Fatalf("dbtest: connect to PostgreSQL: %v", err)
	}
	defer conn.Close(ctx)
	for _, stmt := range stmts {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			tb.Fatalf("dbtest: PostgreSQL exec %q: %v", stmt, err)
		}
	}
}
