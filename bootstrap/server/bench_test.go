package server

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"

	_ "modernc.org/sqlite" // the ceiling reads the store's file directly

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
)

// B8: the bootstrap server's snapshot rate, against the rate of a plain
// SELECT of the same rows from the same SQLite file (the ceiling).
//
//	go test -run '^$' -bench 'SnapshotServe|PlainSelect' ./bootstrap/server/
const (
	benchRows          = 100_000
	benchRowsPerWindow = 1000
	benchWindowsPerTx  = 10
	benchPayload       = 200 - event.HeaderSize - 9 - event.TrailerSize // a ~200-byte frame with an integer key
)

var benchStoreState struct {
	once sync.Once
	dir  string
	path string
	id   string
	head uint64
	err  error
}

// benchStore fills, once per process, a SQLite store with benchRows rows of
// ~200-byte frames (one source, integer keys), each in the snapshot and in
// the log, and returns its path; benchmarks open their own handles on it.
func benchStore(b *testing.B) (path, id string, head uint64) {
	s := &benchStoreState
	s.once.Do(func() {
		s.dir, s.err = os.MkdirTemp("", "databus-bootstrap-bench-")
		if s.err != nil {
			return
		}
		s.path = filepath.Join(s.dir, "bench.db")
		s.id, s.head, s.err = fillBenchStore(s.path)
	})
	if s.err != nil {
		b.Fatal(s.err)
	}
	return s.path, s.id, s.head
}

func fillBenchStore(path string) (string, uint64, error) {
	st, err := openStoreErr(path)
	if err != nil {
		return "", 0, err
	}
	defer st.Close()
	ctx := context.Background()
	if err := st.Apply(ctx, &store.Batch{After: 0, Schemas: testTables[:1]}); err != nil {
		return "", 0, err
	}
	payload := bytes.Repeat([]byte("p"), benchPayload)
	var head uint64
	for k := 0; k < benchRows; {
		b := &store.Batch{After: head}
		for range benchWindowsPerTx {
			if k >= benchRows {
				break
			}
			scn := head + 1
			ts := tsOf(scn)
			var frames []byte
			var rows []store.Row
			n := 0
			for ; n < benchRowsPerWindow && k < benchRows; n, k = n+1, k+1 {
				key := event.AppendKeyInt(nil, int64(k))
				start := len(frames)
				frames, err = event.AppendFrame(frames, &event.Event{Kind: event.KindData, Op: event.OpInsert, SCN: scn, Timestamp: ts, Source: 1, SchemaVersion: 1, Key: key, Payload: payload})
				if err != nil {
					return "", 0, err
				}
				rows = append(rows, store.Row{Source: 1, Key: key, SCN: scn, Op: store.RowUpsert, Frame: frames[start:len(frames):len(frames)]})
			}
			eow := event.EndOfWindow(scn, ts, uint32(n), "")
			if frames, err = event.AppendFrame(frames, &eow); err != nil {
				return "", 0, err
			}
			b.Windows = append(b.Windows, store.Window{SCN: scn, Timestamp: ts, Frames: frames, Rows: rows})
			head = scn
		}
		if err := st.Apply(ctx, b); err != nil {
			return "", 0, err
		}
	}
	s, err := st.State(ctx)
	return s.ID, s.Head, err
}

func removeBenchStore() {
	if d := benchStoreState.dir; d != "" {
		os.RemoveAll(d)
	}
}

// BenchmarkSnapshotServe serves the whole snapshot over loopback HTTP to
// one reader that pages through it with the After tokens, as the client
// does, and decodes every frame.
func BenchmarkSnapshotServe(b *testing.B) {
	path, id, head := benchStore(b)
	st, err := openStoreErr(path)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	srv, err := New(Config{Listen: "127.0.0.1:0"}, st, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()
	<-srv.Ready()
	tr := &http.Transport{MaxIdleConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	base := "http://" + srv.Addr() + "/v1/snapshot?"
	var body bytes.Buffer
	var bytesRead int64

	b.ReportAllocs()
	for b.Loop() {
		after, rows := "", 0
		for {
			u := base + url.Values{"checkpoint": {snapshotCP(id, head, after, uint64(rows))}}.Encode()
			resp, err := client.Get(u)
			if err != nil {
				b.Fatal(err)
			}
			body.Reset()
			_, err = body.ReadFrom(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 {
				b.Fatalf("%d %v %s", resp.StatusCode, err, body.Bytes())
			}
			bytesRead += int64(body.Len())
			for p := body.Bytes(); len(p) > 0; {
				e, n, err := event.Decode(p)
				if err != nil || e.Kind != event.KindData {
					b.Fatalf("frame %d: %v", rows, err)
				}
				rows++
				p = p[n:]
			}
			after = resp.Header.Get(HeaderSnapshotAfter)
			if resp.Header.Get(HeaderSnapshotDone) == "true" {
				break
			}
		}
		if rows != benchRows {
			b.Fatalf("%d rows served, want %d", rows, benchRows)
		}
	}
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(benchRows*b.N)/sec, "rows/s")
	b.ReportMetric(float64(bytesRead)/sec/1e6, "MB/s")
}

// BenchmarkPlainSelect is the ceiling: the same rows read in the same
// order straight from the SQLite file through database/sql, with no HTTP,
// no paging and no decoding.
func BenchmarkPlainSelect(b *testing.B) {
	path, _, _ := benchStore(b)
	db, err := sql.Open("sqlite", path)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	var bytesRead int64
	b.ReportAllocs()
	for b.Loop() {
		rs, err := db.Query("SELECT frame FROM snapshot ORDER BY source, key")
		if err != nil {
			b.Fatal(err)
		}
		rows := 0
		for rs.Next() {
			var frame sql.RawBytes
			if err := rs.Scan(&frame); err != nil {
				b.Fatal(err)
			}
			bytesRead += int64(len(frame))
			rows++
		}
		if err := rs.Close(); err != nil {
			b.Fatal(err)
		}
		if rows != benchRows {
			b.Fatalf("%d rows, want %d", rows, benchRows)
		}
	}
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(benchRows*b.N)/sec, "rows/s")
	b.ReportMetric(float64(bytesRead)/sec/1e6, "MB/s")
}

func openStoreErr(path string) (store.Store, error) {
	st, err := openSQLite(path)
	if err != nil {
		return nil, fmt.Errorf("opening the bench store: %w", err)
	}
	return st, nil
}
