package mysql

import (
	"bytes"
	"errors"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/databus-go/databus/source"
)

// script feeds synthetic events to a capture, with no server: the
// transaction boundaries, skipped transactions and heartbeats.
type script struct {
	t   *testing.T
	c   *capture
	pos uint32
	ts  uint32
}

func newScript(t *testing.T) *script {
	st, err := openSchemaStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := newFilter(&Config{Include: []string{"app.*"}})
	now := time.Unix(5000, 0)
	c := newCapture(newTableCache(collationSet{}, FlavorMariaDB, f, st), st, f, time.Second, 0, 0, func() time.Time { return now })
	s := &script{t: t, c: c, pos: 4, ts: 1000}
	s.feed(&replication.RotateEvent{Position: 4, NextLogName: []byte("binlog.000007")}, 0)
	s.c.setLast(makeSCN(7, 4), 0, posData{File: "binlog.000007", Pos: 4})
	return s
}

// feed hands one event of size bytes to the capture and returns the last
// window it emitted, if any.
func (s *script) feed(e replication.Event, size uint32) *source.Window {
	s.t.Helper()
	ws := s.feedAll(e, size)
	if len(ws) == 0 {
		return nil
	}
	return ws[len(ws)-1]
}

// feedAll hands one event of size bytes to the capture and returns every
// window and chunk it emitted, as they were at the emit call.
func (s *script) feedAll(e replication.Event, size uint32) []*source.Window {
	s.t.Helper()
	h := &replication.EventHeader{Timestamp: s.ts, EventSize: size}
	if size > 0 {
		s.pos += size
		h.LogPos = s.pos
	}
	switch ev := e.(type) {
	case *replication.HeartbeatEvent:
		h.LogPos = s.pos
		ev.Filename = s.c.file
	}
	var ws []*source.Window
	err := s.c.handle(&replication.BinlogEvent{Header: h, Event: e}, func(w *source.Window) error {
		c := *w
		c.Events = nil
		for _, e := range w.Events { // the capture reuses the memory of chunks
			e.Key, e.Payload, e.Before = bytes.Clone(e.Key), bytes.Clone(e.Payload), bytes.Clone(e.Before)
			c.Events = append(c.Events, e)
		}
		ws = append(ws, &c)
		return nil
	})
	if err != nil {
		s.t.Fatal(err)
	}
	return ws
}

// ddl runs a standalone statement as its own GTID group.
func (s *script) ddl(seq uint64, db, q string) *source.Window {
	s.feed(&replication.MariadbGTIDEvent{GTID: gomysql.MariadbGTID{DomainID: 0, ServerID: 1, SequenceNumber: seq}, Flags: replication.BINLOG_MARIADB_FL_STANDALONE}, 42)
	return s.feed(&replication.QueryEvent{Schema: []byte(db), Query: []byte(q)}, 100)
}

func TestCaptureSkippedAndIdle(t *testing.T) {
	s := newScript(t)
	// Statements on tables not captured, in the same second: one empty
	// window (the first, a heartbeat interval after the start), then none.
	var got []*source.Window
	for i := range 5 {
		if w := s.ddl(uint64(i+1), "other", "CREATE TABLE x"+string(rune('0'+i))+" (id INT)"); w != nil {
			got = append(got, w)
		}
	}
	if len(got) != 1 || len(got[0].Events) != 0 || got[0].TxID != "0-1-1" || got[0].Timestamp != 1000*int64(time.Second) {
		t.Fatalf("windows %+v", got)
	}
	// A second later (log time), the next skipped transaction gets one.
	s.ts++
	w := s.ddl(6, "other", "DROP TABLE x0")
	if w == nil || w.SCN != makeSCN(7, s.pos) {
		t.Fatalf("window %+v at %d", w, s.pos)
	}
	// More skipped work, then the server idles: its heartbeat position is
	// past the last window, so an empty window there.
	s.ddl(7, "other", "DROP TABLE x1")
	hb := s.feed(&replication.HeartbeatEvent{}, 0)
	if hb == nil || hb.SCN != makeSCN(7, s.pos) || hb.TxID != "" || hb.Timestamp != 5000*int64(time.Second) {
		t.Fatalf("heartbeat window %+v", hb)
	}
	if d, _, _ := decodePosition(hb.Position); d.GTID != "0-1-7" {
		t.Fatalf("heartbeat position %s", hb.Position.Data)
	}
	// Idle again at the same position: nothing.
	if w := s.feed(&replication.HeartbeatEvent{}, 0); w != nil {
		t.Fatalf("second heartbeat at the same position: %+v", w)
	}
	// A DDL on a captured table is a window even with nothing to announce.
	if w := s.ddl(8, "app", "CREATE TABLE t (id INT)"); w == nil || len(w.Events) != 0 || w.TxID != "0-1-8" {
		t.Fatalf("create window %+v", w)
	}
}

func TestCaptureBackwards(t *testing.T) {
	s := newScript(t)
	s.ddl(1, "app", "CREATE TABLE t (id INT)")
	s.pos = 10 // the log restarted below the last window (RESET MASTER)
	s.feed(&replication.MariadbGTIDEvent{Flags: replication.BINLOG_MARIADB_FL_STANDALONE}, 42)
	err := s.c.handle(&replication.BinlogEvent{
		Header: &replication.EventHeader{Timestamp: s.ts, EventSize: 10, LogPos: s.pos + 10},
		Event:  &replication.QueryEvent{Schema: []byte("app"), Query: []byte("CREATE TABLE u (id INT)")},
	}, func(*source.Window) error { return nil })
	if !errors.Is(err, ErrPositionBackwards) || retryable(err) {
		t.Fatalf("%v", err)
	}
}
