package sqlite

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/databus-go/databus/source"
)

// BenchmarkCapture measures how fast Run turns pre-written single-row
// transactions into windows (rows/s), next to the ceiling: a raw
// SELECT * scan of the same change-log rows through the same driver.
func BenchmarkCapture(b *testing.B) {
	const rows = 20000
	path, db := newDB(b, `CREATE TABLE person(id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT, score REAL, age INTEGER, photo BLOB)`)
	s, _ := open(b, Config{Path: path, Tables: []string{"person"}})
	stmt, err := db.Prepare(`INSERT INTO person VALUES(?, ?, ?, ?, ?, ?)`)
	if err != nil {
		b.Fatal(err)
	}
	for i := range rows {
		if _, err := stmt.Exec(i, fmt.Sprint("name ", i), fmt.Sprintf("p%d@example.com", i), float64(i)/7, i%100, []byte{1, 2, 3, byte(i)}); err != nil {
			b.Fatal(err)
		}
	}
	stmt.Close()
	end := logEnd(b, db)

	// Ceiling: scan the same rows.
	scan := func() time.Duration {
		start := time.Now()
		r, err := db.Query(`SELECT * FROM _databus_changelog WHERE seq <= ?`, end)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for r.Next() {
			var seq, kind int64
			var tbl, newImg, oldImg *string
			var op, ver, ts *int64
			if err := r.Scan(&seq, &kind, &tbl, &op, &ver, &ts, &newImg, &oldImg); err != nil {
				b.Fatal(err)
			}
			n++
		}
		r.Close()
		if n < rows {
			b.Fatalf("scanned %d rows", n)
		}
		return time.Since(start)
	}

	b.ReportAllocs()
	b.ResetTimer()
	var capture, ceiling time.Duration
	for range b.N {
		ctx, cancel := context.WithCancel(context.Background())
		events := 0
		start := time.Now()
		err := s.Run(ctx, source.Position{}, func(_ context.Context, w *source.Window) error {
			events += len(w.Events)
			if w.SCN > end {
				cancel()
			}
			return nil
		})
		capture += time.Since(start)
		cancel()
		if err != context.Canceled || events != rows+1 { // +1: the schema change
			b.Fatalf("Run = %v after %d events", err, events)
		}
		b.StopTimer()
		ceiling += scan()
		b.StartTimer()
	}
	b.ReportMetric(float64(rows*b.N)/capture.Seconds(), "rows/s")
	b.ReportMetric(float64(rows*b.N)/ceiling.Seconds(), "scan-rows/s")
	b.ReportMetric(0, "ns/op")
}
