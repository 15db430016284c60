package mysql

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/source"
)

// TestReconnect streams while the server's connections are cut, the server
// restarts and the server is killed: no window is lost or repeated.
func TestReconnect(t *testing.T) {
	srv := dbtest.MariaDB(t)
	srv.Exec(t, "CREATE DATABASE rc", "CREATE TABLE rc.t (id INT PRIMARY KEY, v INT)")
	db := srv.DB(t, "rc")
	db.SetMaxIdleConns(0) // a fresh connection per statement: cuts hit the writer less
	s, _ := openSource(t, testConfig(t, srv, "rc"))
	from := binlogEnd(t, db)
	r := startRun(t, s, from)

	const n = 450
	var (
		mu       sync.Mutex
		written  int
		writeErr error
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i <= n; i++ {
			deadline := time.Now().Add(60 * time.Second)
			for {
				// INSERT IGNORE: a retry after a commit whose reply was
				// lost changes nothing and logs nothing.
				_, err := db.Exec("INSERT IGNORE INTO t VALUES (?, ?)", i, i)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					mu.Lock()
					writeErr = err
					mu.Unlock()
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			mu.Lock()
			written = i
			mu.Unlock()
		}
	}()
	waitWritten := func(k int) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			mu.Lock()
			w, err := written, writeErr
			mu.Unlock()
			if err != nil {
				t.Fatalf("writer: %v", err)
			}
			if w >= k {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("writer stuck at %d", w)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// Each fault hits a stream that is up: the adapter has caught up with
	// the writer (which keeps writing) first.
	caughtUp := func(k int) {
		t.Helper()
		waitWritten(k)
		r.waitSCN(t, binlogEnd(t, db).SCN, 60*time.Second)
	}
	caughtUp(100)
	srv.CutConnections(t)
	caughtUp(200)
	srv.Restart(t)
	caughtUp(300)
	srv.Kill(t)
	srv.Start(t)
	<-done
	mu.Lock()
	if writeErr != nil {
		t.Fatalf("writer: %v", writeErr)
	}
	mu.Unlock()

	end := binlogEnd(t, db)
	ws := r.waitSCN(t, end.SCN, 60*time.Second)
	r.stop(t)
	checkWindows(t, ws)
	seen := map[string]int{}
	for _, w := range ws {
		for _, e := range w.Events {
			if e.Kind == event.KindData {
				if e.Op != event.OpInsert {
					t.Fatalf("window %d: %v", w.SCN, e.Op)
				}
				seen[keyString(t, e.Key)]++
			}
		}
	}
	for i := 1; i <= n; i++ {
		if c := seen[fmt.Sprint(i)]; c != 1 {
			t.Errorf("row %d seen %d times", i, c)
		}
	}
	if len(seen) != n {
		t.Errorf("%d rows seen, want %d", len(seen), n)
	}
}

// TestPurgedBinlog: resuming from a binlog file the server has purged
// fails with a BinlogPurgedError that says what to do.
func TestPurgedBinlog(t *testing.T) {
	srv := dbtest.MariaDB(t)
	srv.Exec(t, "CREATE DATABASE pg", "CREATE TABLE pg.t (id INT PRIMARY KEY)")
	db := srv.DB(t, "pg")
	from := binlogEnd(t, db)
	srv.Exec(t, "INSERT INTO pg.t VALUES (1)", "FLUSH BINARY LOGS", "FLUSH BINARY LOGS")
	// The server keeps a file until its transactions are checkpointed:
	// purge until it is gone.
	for deadline := time.Now().Add(30 * time.Second); ; {
		srv.Exec(t, "PURGE BINARY LOGS TO 'binlog.000003'")
		files, err := binlogFiles(context.Background(), db)
		if err != nil {
			t.Fatal(err)
		}
		if files[0] == "binlog.000003" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("binlogs %v still there", files)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s, _ := openSource(t, testConfig(t, srv, "pg"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := s.Run(ctx, from, func(context.Context, *source.Window) error { return nil })
	var purged *BinlogPurgedError
	if !errors.As(err, &purged) {
		t.Fatalf("Run: %v, want a BinlogPurgedError", err)
	}
	if purged.File != "binlog.000001" || purged.Oldest != "binlog.000003" {
		t.Fatalf("%+v", purged)
	}
	for _, s := range []string{"binlog.000001", "binlog_expire_logs_seconds", "bootstrap"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	if retryable(err) {
		t.Error("a purged binlog is retryable")
	}
}

// TestRefusals: a server that cannot be captured faithfully is refused at
// Open with the setting to change; rows logged without column names stop
// Run with the same advice.
func TestRefusals(t *testing.T) {
	srv := dbtest.MariaDB(t, dbtest.MariaDBArgs("--binlog-row-metadata=MINIMAL"))
	srv.Exec(t, "CREATE DATABASE rf", "CREATE TABLE rf.t (id INT PRIMARY KEY)")
	db := srv.DB(t, "rf")
	cfg := testConfig(t, srv, "rf")
	open := func() error {
		s, err := New(cfg, WithLogger(quietLogger()))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		_, err = s.Open(context.Background())
		return err
	}
	wantSetting := func(err error, setting, fix string) {
		t.Helper()
		var se *SettingError
		if !errors.As(err, &se) || se.Setting != setting {
			t.Fatalf("got %v, want a SettingError for %s", err, setting)
		}
		if !strings.Contains(err.Error(), fix) || !strings.Contains(err.Error(), "MariaDB setting "+setting) {
			t.Fatalf("error %q does not say %q", err, fix)
		}
	}
	err := open()
	wantSetting(err, "binlog_row_metadata", "set binlog_row_metadata=FULL")
	t.Log(err)

	from := binlogEnd(t, db)
	srv.Exec(t, "INSERT INTO rf.t VALUES (1)", "SET GLOBAL binlog_row_metadata = FULL")
	if err := open(); err != nil {
		t.Fatal(err)
	}
	s, _ := openSource(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = s.Run(ctx, from, func(context.Context, *source.Window) error { return nil })
	wantSetting(err, "binlog_row_metadata", "set binlog_row_metadata=FULL")

	srv.Exec(t, "SET GLOBAL binlog_row_image = MINIMAL")
	wantSetting(open(), "binlog_row_image", "set binlog_row_image=FULL")
	srv.Exec(t, "SET GLOBAL binlog_row_image = FULL", "SET GLOBAL binlog_format = STATEMENT")
	wantSetting(open(), "binlog_format", "set binlog_format=ROW")
	srv.Exec(t, "SET GLOBAL binlog_format = ROW")

	cfg.ServerID = 1 // the server's own id
	if err := open(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "ServerID") {
		t.Fatalf("Open with the server's own id: %v", err)
	}
}

// TestLeastPrivilege: SELECT, REPLICATION SLAVE and BINLOG MONITOR are
// enough.
func TestLeastPrivilege(t *testing.T) {
	srv := dbtest.SharedMariaDB(t)
	dropDatabases(t, srv, "lp")
	srv.Exec(t, "DROP USER IF EXISTS 'capture'@'%'")
	srv.Exec(t, "CREATE DATABASE lp", "CREATE TABLE lp.t (id INT PRIMARY KEY, v TEXT)",
		"CREATE USER 'capture'@'%' IDENTIFIED BY 's3cret'",
		"GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'capture'@'%'")
	db := srv.DB(t, "lp")
	cfg := testConfig(t, srv, "lp")
	cfg.User, cfg.Password = "capture", "s3cret"
	if strings.Contains(fmt.Sprintf("%v %+v %#v", cfg, cfg, cfg), "s3cret") {
		t.Fatal("the password shows in formatted config")
	}
	s, tables := openSource(t, cfg)
	if len(tables) != 1 {
		t.Fatalf("tables %+v", tables)
	}
	// From the zero position: the run starts at the binlog's end and says
	// so with an empty window.
	r := startRun(t, s, source.Position{})
	first := r.waitSCN(t, 1, 30*time.Second)[0]
	if len(first.Events) != 0 || first.SCN != binlogEnd(t, db).SCN {
		t.Fatalf("first window %+v, want an empty one at the binlog end", first)
	}
	srv.Exec(t, "INSERT INTO lp.t VALUES (1, 'a')", "UPDATE lp.t SET v = 'b'", "DELETE FROM lp.t")
	ws := r.waitSCN(t, binlogEnd(t, db).SCN, 30*time.Second)
	r.stop(t)
	var ops []event.Op
	for _, w := range ws {
		for _, e := range w.Events {
			if e.Kind == event.KindData {
				ops = append(ops, e.Op)
			}
		}
	}
	if diff := cmp.Diff([]event.Op{event.OpInsert, event.OpUpdate, event.OpDelete}, ops); diff != "" {
		t.Fatal(diff)
	}
}

// TestHeartbeats: transactions of tables not captured give empty windows
// at the heartbeat cadence, and the heartbeat table keeps the SCN moving.
func TestHeartbeats(t *testing.T) {
	srv := dbtest.SharedMariaDB(t)
	dropDatabases(t, srv, "hb", "hbx")
	srv.Exec(t, "CREATE DATABASE hb", "CREATE DATABASE hbx", "CREATE TABLE hb.t (id INT PRIMARY KEY)",
		"CREATE TABLE hb.other (id INT PRIMARY KEY AUTO_INCREMENT)")
	db := srv.DB(t, "hb")
	cfg := testConfig(t, srv, "hb")
	cfg.Exclude = []string{"hb.other"}
	cfg.HeartbeatInterval = time.Second
	s, _ := openSource(t, cfg)
	from := binlogEnd(t, db)
	// 300 transactions of a table not captured: about one empty window per
	// second they took (log time), not 300.
	began := time.Now()
	for range 300 {
		if _, err := db.Exec("INSERT INTO other () VALUES ()"); err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(began)
	end := binlogEnd(t, db)
	r := startRun(t, s, from)
	ws := r.waitSCN(t, end.SCN, 30*time.Second) // the idle server's heartbeat brings the end
	r.stop(t)
	checkWindows(t, ws)
	for _, w := range ws {
		if len(w.Events) != 0 {
			t.Fatalf("window %d has events", w.SCN)
		}
	}
	if limit := int(took.Seconds()) + 3; len(ws) > limit {
		t.Fatalf("%d empty windows for 300 skipped transactions written in %v: not at heartbeat cadence", len(ws), took)
	}

	// With a heartbeat table, an idle server's SCN moves.
	cfg.HeartbeatTable = "hbx.beat"
	cfg.HeartbeatInterval = 100 * time.Millisecond
	s2, _ := openSource(t, cfg)
	r = startRun(t, s2, source.Position{})
	start := r.waitSCN(t, 1, 30*time.Second)[0].SCN
	ws = r.waitSCN(t, start+1, 30*time.Second)
	time.Sleep(1500 * time.Millisecond)
	ws = r.snapshot()
	r.stop(t)
	checkWindows(t, ws)
	if len(ws) < 3 {
		t.Fatalf("%d windows in 1.5s with a heartbeat table every 100ms", len(ws))
	}
	var beats int
	if err := db.QueryRow("SELECT COUNT(*) FROM hbx.beat").Scan(&beats); err != nil || beats != 1 {
		t.Fatalf("heartbeat table: %d rows, %v", beats, err)
	}
}
