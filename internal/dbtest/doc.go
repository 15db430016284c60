// Package dbtest starts private MariaDB and PostgreSQL servers for tests and
// benchmarks, from the binaries installed on the machine.
//
// # Usage
//
//	func TestMain(m *testing.M) { dbtest.Main(m) }
//
//	func TestCapture(t *testing.T) {
//		s := dbtest.MariaDB(t)           // ready; stopped and removed when the test ends
//		db := s.DB(t, "app")             // creates database app, root pool
//		s.Exec(t, "CREATE TABLE app.t (id INT PRIMARY KEY)")
//		... connect the adapter to s.DSN("app") or s.Host, s.Port ...
//		s.Kill(t); s.Start(t)            // crash and recover, same data and port
//		s.CutConnections(t)              // every client sees its connection fail
//	}
//
//	func TestPostgresCapture(t *testing.T) {
//		s := dbtest.Postgres(t, dbtest.PostgresSettings("max_wal_senders=20"))
//		s.Exec(t, "CREATE TABLE items (id int PRIMARY KEY)")
//		conn, _ := pgconn.Connect(ctx, s.ConnString("postgres")+"&replication=database")
//		...
//	}
//
// A package whose tests each need a database but not a server of their own
// can share one server per test binary, SharedMariaDB(t).DB(t, "orders_test"),
// and save about 0.4 s per test. Shared servers need TestMain to call Main
// or Run, and must not be stopped, killed or cut by a test.
//
// # What a server is
//
//   - A child of the test binary in its own process group, with SIGKILL as
//     its parent-death signal (a backstop if the binary dies). Stop sends the
//     polite signal (SIGTERM to mariadbd's group; SIGINT, "fast shutdown", to
//     the postmaster), waits up to 20 s, then SIGKILLs the group. Kill
//     SIGKILLs the group and every descendant (PostgreSQL's backends are in
//     sessions of their own) at once, and waits until all are gone.
//   - Listening on 127.0.0.1 on a free port (picked by binding port 0; when
//     another program takes it before the server binds, the server is
//     started again on another port, up to 5 times). The port and the data
//     directory survive Stop and Kill, so Start brings back the same server.
//   - Living in a short directory /tmp/dbtest-<pid>-<kind>-<random> (unix
//     socket paths must fit in 107 bytes): Dir, with data/ and the server's
//     log (MariaDBServer.ErrorLog, PostgresServer.Log), removed at cleanup.
//     Directories of test binaries that died without cleaning up are removed
//     by the next binary that starts a server.
//   - Copied (cp -a, about 0.07 s) from a data directory initialised once per
//     test binary (mariadb-install-db about 1 s, initdb about 1.3 s) and
//     removed by Main or Run.
//   - Ready when the constructor returns: readiness is polled (connect and
//     ping) with a 60 s deadline, never a fixed sleep. A server that fails
//     to start fails the test with the tail of its log. A test that fails
//     gets the tail of the log of each server it used in its output.
//
// MariaDB runs with: --no-defaults (first, so /etc/mysql is not read),
// --user=root when the tests run as root, a ROW binlog with FULL row image
// and FULL row metadata in data/binlog.*, server_id=1, max_allowed_packet=64M,
// an 8 MiB redo log, a 64 MiB buffer pool, and
// innodb_flush_log_at_trx_commit=2 (committed data survives Kill, not a power
// cut). root has an empty password over TCP. MariaDBArgs appends options,
// which override the defaults.
//
// PostgreSQL (15 preferred, /usr/lib/postgresql/<version>/bin) runs as the
// postgres user when the tests run as root (initdb and postgres refuse root),
// is started as postgres itself rather than through pg_ctl so that it is our
// child, and has wal_level=logical, max_replication_slots=10,
// max_wal_senders=10, fsync=off and full_page_writes=off. synchronous_commit
// stays on: with fsync off it costs nothing, and off would let Kill lose
// acknowledged commits and delay what a walsender sees by up to 600 ms.
// Authentication is trust from 127.0.0.1, for replication connections too.
// PostgresSettings overrides or adds settings.
//
// # Missing binaries
//
// When the binaries are missing (or, as root, the postgres user), the test
// is skipped with the install command in the reason:
//
//	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y mariadb-server
//	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql-15
//
// With DATABUS_REQUIRE_SERVERS=1 (CI) the test fails instead.
//
// # Pools
//
// DB pools are closed when the test ends. After Kill, Restart or
// CutConnections a MariaDB pool replaces its dead connections by itself
// (go-sql-driver checks a connection before reuse, and logs "[mysql] closing
// bad idle connection" to stderr when it drops one). A PostgreSQL pool pings
// a connection idle for more than a second before reuse, as pgx's stdlib
// adapter does, so a connection used just before a restart can fail once;
// open a new pool with DB after a restart. PostgresServer.DB uses a small
// database/sql driver over pgx (pgsql.go) because pgx's stdlib adapter needs
// a module this one does not require yet; see there for how values come back.
//
// # Costs on a 2-core machine
//
// First server of a kind in a test binary: 1.8-2 s (template included).
// Each further MariaDB: 0.35-0.5 s; PostgreSQL: 0.2-0.3 s; a clean restart
// 0.15-0.2 s (MariaDB), 0.06-0.09 s (PostgreSQL); CREATE DATABASE on
// PostgreSQL 0.05-0.1 s. On 2 cores prefer one server per package with a
// database per test.
//
// # Concurrency
//
// The constructors may be called from parallel tests. DB, Exec, DSN,
// UserDSN, ConnString, UserConnString and the exported fields may be used
// from any goroutine (parallel tests on a shared server do). Stop, Start,
// Restart, Kill and CutConnections must not run concurrently with each
// other on one server.
package dbtest
