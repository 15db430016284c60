package dbtest_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // sql.Open("mysql", ...) below

	"github.com/databus-go/databus/internal/dbtest"
)

// mariadbVars reads global variables by name.
func mariadbVars(t *testing.T, db *sql.DB, names ...string) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, n := range names {
		var name, value string
		if err := db.QueryRow("SHOW GLOBAL VARIABLES LIKE ?", n).Scan(&name, &value); err != nil {
			t.Fatalf("SHOW GLOBAL VARIABLES LIKE %q: %v", n, err)
		}
		got[name] = value
	}
	return got
}

func TestMariaDB(t *testing.T) {
	start := time.Now()
	s := dbtest.MariaDB(t)
	t.Logf("MariaDB ready in %v on port %d, dir %s", time.Since(start), s.Port, s.Dir)
	if len(s.Socket) > 107 {
		t.Errorf("socket path %q is longer than 107 bytes", s.Socket)
	}
	for _, want := range []string{"root@tcp(127.0.0.1:", "multiStatements=true", "interpolateParams=true"} {
		if !strings.Contains(s.DSN("x"), want) {
			t.Errorf("DSN %q does not contain %q", s.DSN("x"), want)
		}
	}
	if strings.Contains(s.DSN("x"), "parseTime=true") {
		t.Errorf("DSN %q has parseTime=true", s.DSN("x"))
	}

	db := s.DB(t, "app")
	got := mariadbVars(t, db, "log_bin", "binlog_format", "binlog_row_image", "binlog_row_metadata", "server_id", "max_allowed_packet")
	want := map[string]string{
		"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL",
		"server_id": "1", "max_allowed_packet": "67108864",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}

	s.Exec(t, "USE app; CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))", "INSERT INTO app.t VALUES (1, 'a')")

	t.Run("LeastPrivilegeUser", func(t *testing.T) {
		s.Exec(t,
			"CREATE USER 'cdc'@'%' IDENTIFIED BY 'secret'",
			"GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'cdc'@'%'")
		cdc, err := sql.Open("mysql", s.UserDSN("cdc", "secret", "app"))
		if err != nil {
			t.Fatal(err)
		}
		defer cdc.Close()
		var v string
		if err := cdc.QueryRow("SELECT v FROM t WHERE id = 1").Scan(&v); err != nil || v != "a" {
			t.Fatalf("SELECT as cdc = %q, %v; want a", v, err)
		}
		rows, err := cdc.Query("SHOW BINARY LOGS") // needs BINLOG MONITOR
		if err != nil {
			t.Fatalf("SHOW BINARY LOGS as cdc: %v", err)
		}
		rows.Close()
		if _, err := cdc.Exec("INSERT INTO t VALUES (2, 'b')"); err == nil {
			t.Error("cdc could INSERT; want a permission error")
		}
	})

	t.Run("KillAndStartKeepsData", func(t *testing.T) {
		s.Exec(t, "INSERT INTO app.t VALUES (3, 'c')")
		port := s.Port
		s.Kill(t)
		if err := db.Ping(); err == nil {
			t.Fatal("ping succeeded after Kill")
		}
		start := time.Now()
		s.Start(t)
		t.Logf("restart after SIGKILL (crash recovery) took %v", time.Since(start))
		if s.Port != port {
			t.Errorf("port changed from %d to %d", port, s.Port)
		}
		var n int
		if err := db.QueryRow("SELECT COUNT(*) FROM t WHERE id IN (1, 3)").Scan(&n); err != nil || n != 2 {
			t.Fatalf("rows after Kill+Start = %d, %v; want 2", n, err)
		}
	})

	t.Run("RestartKeepsData", func(t *testing.T) {
		start := time.Now()
		s.Restart(t)
		t.Logf("clean restart took %v", time.Since(start))
		var v string
		if err := db.QueryRow("SELECT v FROM t WHERE id = 3").Scan(&v); err != nil || v != "c" {
			t.Fatalf("after Restart = %q, %v; want c", v, err)
		}
	})

	t.Run("CutConnections", func(t *testing.T) {
		ctx := context.Background()
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.ExecContext(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		s.CutConnections(t)
		if _, err := conn.ExecContext(ctx, "SELECT 1"); err == nil {
			t.Fatal("a pinned connection still worked after CutConnections")
		}
		// The pool replaces its dead connections.
		if err := db.PingContext(ctx); err != nil {
			t.Fatalf("pool after CutConnections: %v", err)
		}
	})
}

func TestMariaDBTwoInstancesAndArgs(t *testing.T) {
	a := dbtest.MariaDB(t)
	start := time.Now()
	b := dbtest.MariaDB(t, dbtest.MariaDBArgs("--binlog-row-metadata=MINIMAL"))
	t.Logf("second MariaDB ready in %v", time.Since(start))
	if a.Port == b.Port || a.Dir == b.Dir {
		t.Fatalf("instances share port or dir: %d %s, %d %s", a.Port, a.Dir, b.Port, b.Dir)
	}
	a.Exec(t, "CREATE DATABASE only_a")
	dbA, dbB := a.DB(t, ""), b.DB(t, "")
	if got := mariadbVars(t, dbA, "binlog_row_metadata")["binlog_row_metadata"]; got != "FULL" {
		t.Errorf("a: binlog_row_metadata = %q, want FULL", got)
	}
	if got := mariadbVars(t, dbB, "binlog_row_metadata")["binlog_row_metadata"]; got != "MINIMAL" {
		t.Errorf("b: binlog_row_metadata = %q, want MINIMAL (MariaDBArgs)", got)
	}
	var n int
	if err := dbB.QueryRow("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'only_a'").Scan(&n); err != nil || n != 0 {
		t.Errorf("database of a seen on b: %d, %v", n, err)
	}
}

func TestSharedMariaDB(t *testing.T) {
	s := dbtest.SharedMariaDB(t)
	if s2 := dbtest.SharedMariaDB(t); s2 != s {
		t.Fatal("SharedMariaDB returned two servers")
	}
	db := s.DB(t, "shared_test")
	var name string
	if err := db.QueryRow("SELECT DATABASE()").Scan(&name); err != nil || name != "shared_test" {
		t.Fatalf("DATABASE() = %q, %v", name, err)
	}
}
