package mysql

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/source"
)

// benchRows is the number of single-row autocommit transactions the
// benchmark reads; DATABUS_BENCH_ROWS overrides it.
func benchRows() int {
	if n, err := strconv.Atoi(os.Getenv("DATABUS_BENCH_ROWS")); err == nil && n > 0 {
		return n
	}
	return 100_000
}

var benchData struct {
	once     sync.Once
	from     source.Position
	end      source.Position
	srv      *dbtest.MariaDBServer
	rows     int
	duration time.Duration
}

// prepareBench writes the transactions once per test binary.
func prepareBench(b *testing.B) {
	srv := dbtest.SharedMariaDB(b)
	benchData.once.Do(func() {
		n := benchRows()
		srv.Exec(b, "CREATE DATABASE bench CHARACTER SET utf8mb4",
			"CREATE TABLE bench.t (id INT PRIMARY KEY, a BIGINT, s VARCHAR(32), d DATETIME(6), x DOUBLE, dec1 DECIMAL(12,2))",
			`CREATE PROCEDURE bench.fill(n INT) BEGIN
				DECLARE i INT DEFAULT 0;
				WHILE i < n DO
					INSERT INTO bench.t VALUES (i, i * 7, CONCAT('row-', i), NOW(6), i / 3, i / 100);
					SET i = i + 1;
				END WHILE;
			END`)
		db := srv.DB(b, "bench")
		benchData.from = binlogEnd(b, db)
		start := time.Now()
		srv.Exec(b, "SET SESSION autocommit = 1", "CALL bench.fill("+strconv.Itoa(n)+")")
		benchData.duration = time.Since(start)
		benchData.end = binlogEnd(b, db)
		benchData.srv, benchData.rows = srv, n
	})
}

// BenchmarkCapture reads N single-row transactions with the adapter and,
// in the same run, with a bare go-mysql BinlogSyncer decoding the same rows
// (the ceiling: the adapter is built on it).
func BenchmarkCapture(b *testing.B) {
	prepareBench(b)
	srv, n := benchData.srv, benchData.rows
	cfg := testConfig(b, srv, "bench")
	s, err := New(cfg, WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Open(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer s.Close()

	rawMode := rawRate(b, srv, cfg.ServerID+2000, true)

	// The machine is shared and noisy: the ceiling is measured before every
	// adapter run (timer stopped) and averaged like the adapter.
	b.ReportAllocs()
	b.ResetTimer()
	var rows int
	var ceilingTime time.Duration
	for range b.N {
		b.StopTimer()
		ceilingTime += time.Duration(float64(time.Second) * float64(n) / rawRate(b, srv, cfg.ServerID+1000, false))
		b.StartTimer()
		rows += adapterRun(b, s)
	}
	el := b.Elapsed()
	b.StopTimer()
	if rows != n*b.N {
		b.Fatalf("read %d rows, want %d", rows, n*b.N)
	}
	ceiling := float64(n*b.N) / ceilingTime.Seconds()
	b.ReportMetric(float64(rows)/el.Seconds(), "rows/s")
	b.ReportMetric(ceiling, "ceiling-rows/s")
	b.ReportMetric(rawMode, "rawmode-events/s")
	b.ReportMetric(float64(n)/benchData.duration.Seconds(), "write-txn/s")
	b.Logf("%d single-row transactions: adapter %.0f rows/s, go-mysql decoding %.0f rows/s (%.0f%%), go-mysql raw mode %.0f events/s",
		n, float64(rows)/el.Seconds(), ceiling, 100*float64(rows)/el.Seconds()/ceiling, rawMode)
}

// adapterRun reads the benchmark's transactions once and returns the rows.
func adapterRun(b *testing.B, s *Source) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rows := 0
	done := fmt.Errorf("done")
	err := s.Run(ctx, benchData.from, func(_ context.Context, w *source.Window) error {
		rows += len(w.Events)
		if w.SCN >= benchData.end.SCN {
			return done
		}
		return nil
	})
	if err != done {
		b.Fatal(err)
	}
	// The first window carries the table's schema change.
	return rows - 1
}

// rawRate reads the same binlog range with go-mysql alone and returns its
// rate: rows/s decoding rows as the adapter has them decoded, or events/s
// in raw mode (no decoding at all).
func rawRate(b *testing.B, srv *dbtest.MariaDBServer, serverID uint32, raw bool) float64 {
	var p posData
	if err := jsonUnmarshalPos(benchData.from, &p); err != nil {
		b.Fatal(err)
	}
	var endPos posData
	if err := jsonUnmarshalPos(benchData.end, &endPos); err != nil {
		b.Fatal(err)
	}
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: serverID, Flavor: gomysql.MariaDBFlavor, Host: srv.Host, Port: uint16(srv.Port), User: "root",
		ParseTime: false, TimestampStringLocation: time.UTC, RawModeEnabled: raw, DiscardGTIDSet: true,
		EventCacheCount: 1024, Logger: slog.New(slog.DiscardHandler),
	})
	defer syncer.Close()
	start := time.Now()
	st, err := syncer.StartSync(gomysql.Position{Name: p.File, Pos: p.Pos})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	count := 0
	for {
		ev, err := st.GetEvent(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if raw {
			count++
		} else if re, ok := ev.Event.(*replication.RowsEvent); ok {
			count += len(re.Rows)
		}
		if ev.Header.LogPos >= endPos.Pos && ev.Header.EventType == replication.XID_EVENT {
			break
		}
	}
	return float64(count) / time.Since(start).Seconds()
}

func jsonUnmarshalPos(p source.Position, d *posData) error {
	got, ok, err := decodePosition(p)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no position data")
	}
	*d = got
	return nil
}
