package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/source"
)

// benchRows is the number of rows each benchmark reads;
// DATABUS_BENCH_ROWS overrides it.
func benchRows() int {
	if n, err := strconv.Atoi(os.Getenv("DATABUS_BENCH_ROWS")); err == nil && n > 0 {
		return n
	}
	return 20_000
}

// benchSet is one pre-written workload: rows in transactions of perTxn
// rows, readable from its own slot (never confirmed, so every run reads
// the same WAL) up to end.
type benchSet struct {
	env      *env
	src      *Source
	end      uint64
	rows     int
	writeDur time.Duration
}

// prepareBench writes both workloads, each into its own database with a
// slot created just before it. They live until b ends.
func prepareBench(b *testing.B) map[int]*benchSet {
	srv := dbtest.SharedPostgres(b)
	sets := map[int]*benchSet{}
	{
		n := benchRows()
		for _, per := range []int{1, 100} {
			e := newEnv(b, srv, "public.t")
			e.exec(b, "CREATE TABLE t (id int PRIMARY KEY, a bigint, s text, d timestamptz, x double precision, n numeric(12,2))")
			s, _ := open(b, e.cfg) // creates the publication and the slot
			start := time.Now()
			e.exec(b, fmt.Sprintf(`DO $$ BEGIN
				FOR i IN 0..%d LOOP
					INSERT INTO t SELECT g, g * 7, 'row-' || g, now(), g / 3.0, g / 100.0
						FROM generate_series(i * %d, i * %d + %d) g;
					COMMIT;
				END LOOP; END $$`, n/per-1, per, per, per-1))
			sets[per] = &benchSet{env: e, src: s, end: e.mark(b), rows: n, writeDur: time.Since(start)}
		}
	}
	return sets
}

// BenchmarkCapture reads N pre-written rows, in single-row and in 100-row
// transactions, with the adapter and, in the same run, with a bare
// pglogrepl loop decoding the same WAL from the same slot (the ceiling:
// START_REPLICATION with the same options and ParseV2 of every message).
func BenchmarkCapture(b *testing.B) {
	sets := prepareBench(b)
	for _, per := range []int{1, 100} {
		b.Run(fmt.Sprintf("rowsPerTxn=%d", per), func(b *testing.B) {
			set := sets[per]
			b.ReportAllocs()
			b.ResetTimer()
			var rows int
			var ceilingTime time.Duration
			for range b.N {
				b.StopTimer()
				start := time.Now()
				if got := rawRun(b, set); got != set.rows {
					b.Fatalf("raw loop read %d rows, want %d", got, set.rows)
				}
				ceilingTime += time.Since(start)
				b.StartTimer()
				rows += adapterRun(b, set)
			}
			el := b.Elapsed()
			b.StopTimer()
			if rows != set.rows*b.N {
				b.Fatalf("adapter read %d rows, want %d", rows, set.rows*b.N)
			}
			rate := float64(rows) / el.Seconds()
			ceiling := float64(set.rows*b.N) / ceilingTime.Seconds()
			b.ReportMetric(rate, "rows/s")
			b.ReportMetric(ceiling, "ceiling-rows/s")
			b.ReportMetric(float64(set.rows)/set.writeDur.Seconds(), "write-rows/s")
			b.Logf("%d rows in %d-row transactions: adapter %.0f rows/s, raw pglogrepl %.0f rows/s (%.0f%%)",
				set.rows, per, rate, ceiling, 100*rate/ceiling)
		})
	}
}

var errBenchDone = errors.New("done")

// adapterRun reads the set once with the adapter and returns the rows.
func adapterRun(b *testing.B, set *benchSet) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rows := 0
	err := set.src.Run(ctx, source.Position{}, func(_ context.Context, w *source.Window) error {
		for i := range w.Events {
			if w.Events[i].Kind == event.KindData {
				rows++
			}
		}
		if w.SCN >= set.end {
			return errBenchDone
		}
		return nil
	})
	if err != errBenchDone {
		b.Fatal(err)
	}
	return rows
}

// rawRun reads the set once with pglogrepl alone and returns the rows.
func rawRun(b *testing.B, set *benchSet) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var conn *pgconn.PgConn
	for {
		var err error
		if conn, err = pgconn.Connect(ctx, set.env.srv.ConnString(set.env.name)+"&replication=database"); err != nil {
			b.Fatal(err)
		}
		err = pglogrepl.StartReplication(ctx, conn, set.env.name, 0, pglogrepl.StartReplicationOptions{
			Mode:       pglogrepl.LogicalReplication,
			PluginArgs: []string{"proto_version '2'", "publication_names 'databus'", "streaming 'on'", "messages 'true'"},
		})
		if err == nil {
			break
		}
		conn.Close(context.Background())
		// The adapter's walsender may not have released the slot yet.
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != sqlObjectInUse {
			b.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	defer func() {
		conn.Close(context.Background())
		// Let the walsender release the slot before the adapter's turn.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
			var active bool
			if err := set.env.db.QueryRow("SELECT active FROM pg_replication_slots WHERE slot_name = $1", set.env.name).Scan(&active); err != nil || !active {
				return
			}
		}
	}()
	rows := 0
	inStream := false
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			b.Fatal(err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 || cd.Data[0] != pglogrepl.XLogDataByteID {
			continue
		}
		xld, err := pglogrepl.ParseXLogData(cd.Data[1:])
		if err != nil {
			b.Fatal(err)
		}
		m, err := pglogrepl.ParseV2(xld.WALData, inStream)
		if err != nil {
			b.Fatal(err)
		}
		switch m := m.(type) {
		case *pglogrepl.StreamStartMessageV2:
			inStream = true
		case *pglogrepl.StreamStopMessageV2:
			inStream = false
		case *pglogrepl.InsertMessageV2:
			rows++
		case *pglogrepl.LogicalDecodingMessageV2:
			if uint64(m.LSN) >= set.end {
				return rows
			}
		}
	}
}
