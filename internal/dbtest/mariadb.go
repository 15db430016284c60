package dbtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// mariadbInstall is the command that provides the MariaDB binaries; it is in
// every skip message so the reader knows how to run the skipped tests.
const mariadbInstall = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y mariadb-server"

// mariadbSearchDirs are searched for the binaries after PATH (/usr/sbin is
// often not in a non-root PATH). A variable so the tests can empty it.
var mariadbSearchDirs = []string{"/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"}

// mariadbTemplate is the data directory initialised once per test binary.
var mariadbTemplate template

// MariaDBOption configures a server started by MariaDB.
type MariaDBOption func(*mariadbConfig)

type mariadbConfig struct {
	extraArgs []string
}

// MariaDBArgs appends server options to the default command line. Later
// options win, so MariaDBArgs("--binlog-row-metadata=MINIMAL") overrides the
// default FULL (to test that an adapter refuses such a server).
func MariaDBArgs(args ...string) MariaDBOption {
	return func(c *mariadbConfig) { c.extraArgs = append(c.extraArgs, args...) }
}

// MariaDBServer is a private mariadbd started by MariaDB or SharedMariaDB.
// Root has an empty password and may connect over TCP from 127.0.0.1.
//
// Its methods take the test as their first argument and fail it on error.
// See the package documentation for which may run concurrently.
type MariaDBServer struct {
	Host     string // always 127.0.0.1
	Port     int    // TCP port; kept across Stop/Kill and Start
	Socket   string // unix socket path
	Dir      string // instance directory: data/ (datadir, binlog.* files), err.log
	ErrorLog string // the server's error log (stdout and stderr go there too)

	bin       string
	extraArgs []string
	lifecycle
}

// mariadbBinaries returns the server and install-db paths, or a skip reason.
func mariadbBinaries() (server, installDB, missing string) {
	server = findBinary("mariadbd", mariadbSearchDirs)
	installDB = findBinary("mariadb-install-db", mariadbSearchDirs)
	if server == "" || installDB == "" {
		return "", "", "dbtest: MariaDB binaries mariadbd and mariadb-install-db not found in PATH or " +
			strings.Join(mariadbSearchDirs, ", ") + "; install them with: " + mariadbInstall
	}
	return server, installDB, ""
}

// MariaDB starts a private MariaDB server for the test and registers its
// stop and removal with tb.Cleanup. It skips the test when the binaries are
// missing (fails it under DATABUS_REQUIRE_SERVERS=1).
//
// The server writes a ROW binlog with full images and full metadata
// (data/binlog.*), server_id=1, max_allowed_packet=64M, small InnoDB sizes
// and innodb_flush_log_at_trx_commit=2 (safe against a killed server, not
// against a power cut). It is ready when MariaDB returns.
func MariaDB(tb testing.TB, opts ...MariaDBOption) *MariaDBServer {
	tb.Helper()
	server, installDB, missing := mariadbBinaries()
	if missing != "" {
		unavailable(tb, missing)
		return nil
	}
	var cfg mariadbConfig
	for _, o := range opts {
		o(&cfg)
	}
	s, err := startMariaDB(server, installDB, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("dbtest: MariaDB error log %s (tail):\n%s", s.ErrorLog, tail(s.ErrorLog, 40))
		}
		if err := s.close(s.Dir); err != nil {
			tb.Error(err)
		}
	})
	return s
}

var sharedMariaDB struct {
	once sync.Once
	s    *MariaDBServer
	err  error
}

// SharedMariaDB returns the test binary's shared MariaDB server, starting it
// on first use; it lets a package pay for one server and give each test its
// own database (see DB). TestMain must call Main or Run, which stop it.
// Tests must not Stop, Start, Restart, Kill or CutConnections it: use
// MariaDB for those.
func SharedMariaDB(tb testing.TB) *MariaDBServer {
	tb.Helper()
	server, installDB, missing := mariadbBinaries()
	if missing != "" {
		unavailable(tb, missing)
		return nil
	}
	if !mainActive.Load() {
		tb.Fatal("dbtest: SharedMariaDB needs TestMain to call dbtest.Main(m) or dbtest.Run(m), which stop the shared server")
	}
	sharedMariaDB.once.Do(func() {
		s, err := startMariaDB(server, installDB, mariadbConfig{})
		if err != nil {
			sharedMariaDB.err = err
			return
		}
		s.shared = true
		sharedMariaDB.s = s
		sharedMu.Lock()
		sharedStops = append(sharedStops, func() { _ = s.close(s.Dir) })
		sharedMu.Unlock()
	})
	if sharedMariaDB.err != nil {
		tb.Fatal(sharedMariaDB.err)
	}
	logTailOnFailure(tb, "MariaDB error", sharedMariaDB.s.ErrorLog)
	return sharedMariaDB.s
}

// initMariaDBTemplate runs mariadb-install-db into dir/data.
func initMariaDBTemplate(installDB string) func(dir string) (string, error) {
	return func(dir string) (string, error) {
		data := dir + "/data"
		args := []string{
			"--no-defaults", // must be first, or /etc/mysql is read
			"--datadir=" + data,
			"--auth-root-authentication-method=normal", // root, empty password, over TCP
			"--skip-test-db",
			"--skip-name-resolve",
			"--innodb-log-file-size=8M",
		}
		if os.Geteuid() == 0 {
			args = append(args, "--user=root")
		}
		logPath := dir + "/install.log"
		p, err := startProcess(installDB, args, dir, logPath, dir, nil)
		if err != nil {
			return "", err
		}
		timer := time.NewTimer(readyTimeout)
		defer timer.Stop()
		select {
		case <-p.done:
		case <-timer.C:
			p.kill()
			return "", fmt.Errorf("dbtest: mariadb-install-db did not finish within %v; log tail:\n%s", readyTimeout, tail(logPath, 30))
		}
		if p.waitErr != nil {
			return "", fmt.Errorf("dbtest: mariadb-install-db: %v; log tail:\n%s", p.waitErr, tail(logPath, 30))
		}
		return data, nil
	}
}

// startMariaDB copies the template and starts a server on a free port,
// retrying with another port when the chosen one was taken meanwhile.
func startMariaDB(server, installDB string, cfg mariadbConfig) (*MariaDBServer, error) {
	tpl, err := mariadbTemplate.get("mdbtpl", initMariaDBTemplate(installDB))
	if err != nil {
		return nil, err
	}
	dir, err := mkdirTemp("mdb")
	if err != nil {
		return nil, err
	}
	s := &MariaDBServer{
		Host:      "127.0.0.1",
		Socket:    dir + "/s.sock",
		Dir:       dir,
		ErrorLog:  dir + "/err.log",
		bin:       server,
		extraArgs: cfg.extraArgs,
	}
	s.lifecycle = lifecycle{kind: "MariaDB", ctor: "dbtest.MariaDB(t)", start: s.start,
		stop: func(p *process) error { return p.stop(syscall.SIGTERM, true) }}
	if err := copyDir(tpl, dir+"/data"); err != nil {
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

// args is the server command line. Later options override earlier ones, so
// the extra arguments come last.
func (s *MariaDBServer) args() []string {
	a := []string{
		"--no-defaults", // must be first, or /etc/mysql is read
		"--datadir=" + s.Dir + "/data",
		"--socket=" + s.Socket,
		"--port=" + strconv.Itoa(s.Port),
		"--bind-address=127.0.0.1",
		"--pid-file=" + s.Dir + "/m.pid",
		"--log-error=" + s.ErrorLog,
		"--log-bin=" + s.Dir + "/data/binlog",
		"--binlog-format=ROW",
		"--binlog-row-image=FULL",
		"--binlog-row-metadata=FULL", // column names in table-map events
		"--server-id=1",
		"--skip-name-resolve",
		"--innodb-log-file-size=8M",
		"--innodb-buffer-pool-size=64M",
		"--innodb-flush-log-at-trx-commit=2",
		"--max-allowed-packet=64M",
	}
	if os.Geteuid() == 0 {
		a = append(a, "--user=root") // mariadbd refuses to run as root otherwise
	}
	return append(a, s.extraArgs...)
}

// start starts the server process and waits until it answers a ping. On
// failure the process is killed, portTaken tells whether the port was in
// use, and the error carries the tail of the error log.
func (s *MariaDBServer) start() (portTaken bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return false, errors.New("dbtest: MariaDB server is already running")
	}
	offset := fileSize(s.ErrorLog)
	p, err := startProcess(s.bin, s.args(), s.Dir, s.ErrorLog, s.Dir, nil)
	if err != nil {
		return false, err
	}
	if err := s.waitReady(p); err != nil {
		p.kill()
		fresh := readFrom(s.ErrorLog, offset)
		return strings.Contains(fresh, "Address already in use"),
			fmt.Errorf("dbtest: MariaDB on port %d: %w; error log tail:\n%s", s.Port, err, tail(s.ErrorLog, 30))
	}
	s.proc = p
	return false, nil
}

// waitReady pings the server over TCP until it answers, the process exits,
// or readyTimeout passes.
func (s *MariaDBServer) waitReady(p *process) error {
	cfg := s.config("root", "", "")
	cfg.Logger = discardLogger{} // refused or half-open connections while starting are expected
	cfg.Timeout = time.Second
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return err
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	deadline := time.Now().Add(readyTimeout)
	for {
		if p.exited() {
			return fmt.Errorf("server exited while starting: %v", p.waitErr)
		}
		ctx, cancel := p.attemptContext(2 * time.Second)
		err := db.PingContext(ctx)
		cancel()
		if err == nil {
			return nil
		}
		var myErr *mysql.MySQLError
		if errors.As(err, &myErr) {
			return fmt.Errorf("server is up but refuses root: %w", err) // waiting will not help
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %v: %w", readyTimeout, err)
		}
		time.Sleep(pollInterval)
	}
}

// config is the driver configuration for user on database db ("" for none).
func (s *MariaDBServer) config(user, password, db string) *mysql.Config {
	cfg := mysql.NewConfig()
	cfg.User = user
	cfg.Passwd = password
	cfg.Net = "tcp"
	cfg.Addr = net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
	cfg.DBName = db
	cfg.ParseTime = false
	cfg.MultiStatements = true
	cfg.InterpolateParams = true
	cfg.Timeout = 10 * time.Second
	return cfg
}

// DSN is a go-sql-driver/mysql data source name for root (empty password)
// over TCP with database db ("" for none), with parseTime=false,
// multiStatements=true and interpolateParams=true.
func (s *MariaDBServer) DSN(db string) string { return s.config("root", "", db).FormatDSN() }

// UserDSN is DSN for another user, for example a least-privilege capture
// user created by the test.
func (s *MariaDBServer) UserDSN(user, password, db string) string {
	return s.config(user, password, db).FormatDSN()
}

// openRoot opens a root pool on database db, without checking it.
func (s *MariaDBServer) openRoot(db string) *sql.DB {
	conn, err := mysql.NewConnector(s.config("root", "", db))
	if err != nil {
		panic(err) // the configuration is built above and always valid
	}
	return sql.OpenDB(conn)
}

// DB creates database db if it does not exist and returns a root pool on it
// ("" for no default database), closed when the test ends.
func (s *MariaDBServer) DB(tb testing.TB, db string) *sql.DB {
	tb.Helper()
	if db != "" {
		s.Exec(tb, "CREATE DATABASE IF NOT EXISTS "+quoteMySQLIdent(db))
	}
	pool := s.openRoot(db)
	tb.Cleanup(func() { pool.Close() })
	if err := pool.PingContext(context.Background()); err != nil {
		tb.Fatalf("dbtest: connect to MariaDB database %q: %v", db, err)
	}
	return pool
}

// Exec runs the statements in order as root on one connection with no
// default database (a statement may be USE db; it lasts for the call), and
// fails the test on the first error.
func (s *MariaDBServer) Exec(tb testing.TB, stmts ...string) {
	tb.Helper()
	ctx := context.Background()
	db := s.openRoot("")
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		tb.Fatalf("dbtest: connect to MariaDB: %v", err)
	}
	defer conn.Close()
	for _, stmt := range stmts {
		if _, err := conn.ExecContext(ctx, stmt); err != nil {
			tb.Fatalf("dbtest: MariaDB exec %q: %v", stmt, err)
		}
	}
}

// CutConnections kills every client connection to the server except the one
// it uses itself (found with SHOW PROCESSLIST, killed with KILL), including
// replication (binlog dump) connections, and waits until they are gone. It
// simulates a network cut: the clients see their next read or write fail.
func (s *MariaDBServer) CutConnections(tb testing.TB) {
	tb.Helper()
	s.mustNotBeShared(tb, "CutConnections")
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	db := s.openRoot("")
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		tb.Fatalf("dbtest: connect to MariaDB: %v", err)
	}
	defer conn.Close()
	var own int64
	if err := conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&own); err != nil {
		tb.Fatalf("dbtest: CONNECTION_ID(): %v", err)
	}
	ids, err := clientConnections(ctx, conn, own)
	if err != nil {
		tb.Fatal(err)
	}
	for _, id := range ids {
		_, err := conn.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatInt(id, 10))
		var myErr *mysql.MySQLError
		if err != nil && !(errors.As(err, &myErr) && myErr.Number == 1094) { // 1094: unknown thread, it ended by itself
			tb.Fatalf("dbtest: KILL %d: %v", id, err)
		}
	}
	killed := make(map[int64]bool, len(ids))
	for _, id := range ids {
		killed[id] = true
	}
	for {
		left, err := clientConnections(ctx, conn, own)
		if err != nil {
			tb.Fatal(err)
		}
		remaining := 0
		for _, id := range left {
			if killed[id] {
				remaining++
			}
		}
		if remaining == 0 {
			return
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("dbtest: %d killed connections still listed after %v", remaining, readyTimeout)
		case <-time.After(pollInterval):
		}
	}
}

// clientConnections lists the ids of the client connections other than own,
// leaving out the server's own threads (Command "Daemon", user "system user").
func clientConnections(ctx context.Context, conn *sql.Conn, own int64) ([]int64, error) {
	rows, err := conn.QueryContext(ctx, "SHOW PROCESSLIST")
	if err != nil {
		return nil, fmt.Errorf("dbtest: SHOW PROCESSLIST: %w", err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	idCol, userCol, cmdCol := -1, -1, -1
	for i, c := range cols {
		switch strings.ToLower(c) {
		case "id":
			idCol = i
		case "user":
			userCol = i
		case "command":
			cmdCol = i
		}
	}
	if idCol < 0 || userCol < 0 || cmdCol < 0 {
		return nil, fmt.Errorf("dbtest: SHOW PROCESSLIST: unexpected columns %v", cols)
	}
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	var ids []int64
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		id, err := strconv.ParseInt(string(vals[idCol]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("dbtest: SHOW PROCESSLIST: bad id %q", vals[idCol])
		}
		if id == own || string(vals[cmdCol]) == "Daemon" || string(vals[userCol]) == "system user" {
			continue
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// quoteMySQLIdent quotes an identifier with backticks.
func quoteMySQLIdent(name string) string {
	return "`" + strings.ReplaceAll(name, "`", "``") + "`"
}

// discardLogger silences the driver while polling a starting server.
type discardLogger struct{}

func (discardLogger) Print(...any) {}

// fileSize returns the size of the file at path, 0 if it does not exist.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom returns the content of the file at path from offset on.
func readFrom(path string, offset int64) string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < offset {
		return ""
	}
	return string(b[offset:])
}
