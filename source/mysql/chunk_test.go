package mysql

import (
	"context"
	"errors"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/google/go-cmp/cmp"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/source"
)

// TestChunkedTransaction: with a small Config.ChunkBytes, a large
// transaction arrives as chunks that assemble into exactly the window an
// unchunked run yields (same events in the same order, schema-change
// events included, same SCN, position and GTID).
func TestChunkedTransaction(t *testing.T) {
	srv := dbtest.SharedMariaDB(t)
	dropDatabases(t, srv, "chunk")
	srv.Exec(t,
		"CREATE DATABASE chunk",
		"CREATE TABLE chunk.a (id INT PRIMARY KEY, v VARCHAR(40) NOT NULL)",
		"CREATE TABLE chunk.b (id INT PRIMARY KEY, w INT)",
	)
	db := srv.DB(t, "chunk")
	cfg := testConfig(t, srv, "chunk")
	from := binlogEnd(t, db)
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"INSERT INTO a SELECT seq, CONCAT('row ', seq, ' of a transaction in chunks') FROM seq_1_to_3000",
		"UPDATE a SET v = CONCAT(v, '!') WHERE id % 7 = 0",
		"INSERT INTO b SELECT seq, seq * 2 FROM seq_1_to_500", // b's schema is announced in a later chunk
		"DELETE FROM a WHERE id % 11 = 0",
		"UPDATE a SET id = id + 100000 WHERE id % 13 = 1", // key changes: delete + insert
	} {
		if _, err := tx.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	srv.Exec(t, "INSERT INTO chunk.b VALUES (0, 0)") // a small window after it

	cfg.ChunkBytes = 1 << 40 // reference: never chunked
	s, _ := openSource(t, cfg)
	want := collect(t, s, db, from)
	cfg.ChunkBytes = 4096 // the same state directory: the same ids and versions
	s2, _ := openSource(t, cfg)
	r := startRun(t, s2, from)
	got := r.waitSCN(t, want[len(want)-1].SCN, 60*time.Second)
	r.stop(t)
	got = got[:len(want)]
	checkWindows(t, got)
	if r.chunks < 20 || r.abandoned != 0 {
		t.Errorf("%d chunks, %d abandoned; want many chunks, none abandoned", r.chunks, r.abandoned)
	}
	big := 0
	for _, w := range want {
		big = max(big, len(w.Events))
	}
	if big < 3000 {
		t.Fatalf("the largest window has %d events", big)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("chunked run differs from the unchunked one (-want +got):\n%s", d)
	}
	changes := 0
	for _, w := range got {
		for _, e := range w.Events {
			if e.Kind == event.KindSchemaChange {
				changes++
			}
		}
	}
	if changes != 2 {
		t.Errorf("%d schema-change events, want 2 (a and b)", changes)
	}
}

// TestChunkedRunInterrupted: Run ending between chunks (here: emit fails)
// leaves the transaction for the next Run, which emits it again from its
// start, whole.
func TestChunkedRunInterrupted(t *testing.T) {
	srv := dbtest.SharedMariaDB(t)
	dropDatabases(t, srv, "chunkint")
	srv.Exec(t, "CREATE DATABASE chunkint", "CREATE TABLE chunkint.a (id INT PRIMARY KEY, v VARCHAR(40) NOT NULL)")
	db := srv.DB(t, "chunkint")
	cfg := testConfig(t, srv, "chunkint")
	cfg.ChunkBytes = 4096
	from := binlogEnd(t, db)
	if _, err := db.Exec("INSERT INTO a SELECT seq, CONCAT('v', seq) FROM seq_1_to_2000"); err != nil {
		t.Fatal(err)
	}
	s, _ := openSource(t, cfg)
	errStop := errors.New("stop")
	chunks := 0
	err := s.Run(context.Background(), from, func(_ context.Context, w *source.Window) error {
		if w.Partial {
			chunks++
			if chunks == 3 {
				return errStop
			}
			return nil
		}
		if len(w.Events) > 0 {
			t.Errorf("window %d with %d events before the interruption", w.SCN, len(w.Events))
		}
		return nil
	})
	if !errors.Is(err, errStop) {
		t.Fatalf("Run = %v, want emit's error", err)
	}
	ws := collect(t, s, db, from)
	n := 0
	for _, w := range ws {
		for _, e := range w.Events {
			if e.Kind == event.KindData {
				n++
				if k, _ := event.DecodeKey(e.Key); k[0] != int64(n) {
					t.Fatalf("event %d has key %v", n, k)
				}
			}
		}
	}
	if n != 2000 {
		t.Errorf("%d data events after the rerun, want 2000", n)
	}
}

// TestCaptureAbandonsChunks: a transaction whose chunks were emitted but
// that ends without a commit the adapter delivers (a new transaction
// begins, it is logged with ROLLBACK, or the stream reconnects) is
// abandoned with an abandoning chunk.
func TestCaptureAbandonsChunks(t *testing.T) {
	gtid := func(seq uint64) replication.Event {
		return &replication.MariadbGTIDEvent{GTID: gomysql.MariadbGTID{DomainID: 0, ServerID: 1, SequenceNumber: seq}}
	}
	abandons := func(ws []*source.Window) int {
		n := 0
		for _, w := range ws {
			if w.Partial && w.Abandon && len(w.Events) == 0 {
				n++
			}
		}
		return n
	}

	s := newScript(t)
	s.feed(gtid(1), 42)
	s.c.tx.chunked = true // as after a chunk of its rows
	if ws := s.feedAll(gtid(2), 42); abandons(ws) != 1 || len(ws) != 1 {
		t.Errorf("a new transaction over a chunked one emitted %+v", ws)
	}

	s = newScript(t)
	s.feed(gtid(1), 42)
	s.feed(&replication.QueryEvent{Schema: []byte("app"), Query: []byte("BEGIN")}, 50)
	s.c.tx.chunked = true
	s.ts += 10 // so that the dropped transaction gets a heartbeat window
	ws := s.feedAll(&replication.QueryEvent{Schema: []byte("app"), Query: []byte("ROLLBACK")}, 50)
	if abandons(ws) != 1 || ws[0].Abandon != true || (len(ws) == 2 && (ws[1].Partial || len(ws[1].Events) != 0)) {
		t.Errorf("ROLLBACK of a chunked transaction emitted %+v", ws)
	}

	s = newScript(t)
	s.feed(gtid(1), 42)
	s.c.tx.chunked = true
	var got []source.Window
	if err := s.c.reset(func(w *source.Window) error { got = append(got, *w); return nil }); err != nil || len(got) != 1 || !got[0].Abandon {
		t.Errorf("reset of a chunked transaction emitted %+v (%v)", got, err)
	}
	got = nil
	if err := s.c.reset(func(w *source.Window) error { got = append(got, *w); return nil }); err != nil || len(got) != 0 {
		t.Errorf("reset with no transaction emitted %+v (%v)", got, err)
	}
}
