package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/databus-go/databus/bootstrap"
	"github.com/databus-go/databus/source"
)

// The seeding benchmarks copy a 200k-row table of about 200 bytes a row
// (a BIGINT key, 188 characters of text, a BIGINT) that predates the relay
// into a new SQLite bootstrap store through the producer, with the default
// seed settings (chunks of 4096 rows), and report rows/s from the start of
// the producer's Run until the seed is done: the watermarks' round trips
// through the binlog or WAL, the relay and the stream, the chunk reads and
// the store's transactions included. Beside it, in the same run, is the
// ceiling: one plain SELECT of the same rows through database/sql, scanned
// into Go values.
//
//	go test -run '^$' -bench 'BenchmarkSeed' -benchtime 3x ./e2e/

const (
	seedBenchRows = 200_000

	seedBenchMariaDBTable = `CREATE TABLE big (id BIGINT PRIMARY KEY, v VARCHAR(200) NOT NULL, n BIGINT NULL)`
	seedBenchMariaDBFill  = `INSERT INTO big SELECT seq, CONCAT(SHA2(seq, 512), LEFT(SHA2(seq, 256), 60)), seq * 7 FROM seq_1_to_%d`

	seedBenchPostgresTable = `CREATE TABLE big (id bigint PRIMARY KEY, v text NOT NULL, n bigint)`
	seedBenchPostgresFill  = `INSERT INTO big SELECT g, encode(sha512(g::text::bytea), 'hex') || left(encode(sha256(g::text::bytea), 'hex'), 60), g * 7
		FROM generate_series(1, %d) g`
)

// BenchmarkSeedMariaDB seeds a 200k-row MariaDB table into SQLite (see
// above).
func BenchmarkSeedMariaDB(b *testing.B) {
	name := seedName("seedbenchm")
	e := seedMariaDB(b, name, seedBenchMariaDBTable, fmt.Sprintf(seedBenchMariaDBFill, seedBenchRows))
	seedBench(b, e.db, relayURL(e.relay), e.reader, name+".big")
}

// BenchmarkSeedPostgres seeds a 200k-row PostgreSQL table into SQLite (see
// above).
func BenchmarkSeedPostgres(b *testing.B) {
	name := seedName("seedbenchp")
	e := seedPostgres(b, name, seedBenchPostgresTable, fmt.Sprintf(seedBenchPostgresFill, seedBenchRows), "ANALYZE big")
	seedBench(b, e.db, relayURL(e.relay), e.reader, "public.big")
}

func seedBench(b *testing.B, db *sql.DB, relayURL string, chunks source.ChunkReader, table string) {
	selectRate := seedSelectRate(b, db)
	b.ReportAllocs()
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		st := seedOpenSQLite(b) // closed when the benchmark ends
		p, err := bootstrap.NewProducer(bootstrap.Config{Relays: []string{relayURL}, Seed: bootstrap.SeedConfig{Tables: []string{table}}},
			st, chunks, warnLogger(b), prometheus.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		b.StartTimer()
		start := time.Now()
		go func() { done <- p.Run(ctx) }()
		var s bootstrap.SeedStatus
		pollUntil(b, 5*time.Minute, "the seed to be done", func() bool {
			for _, x := range p.SeedStatus() {
				if x.Table == table {
					s = x
				}
			}
			return s.Done
		})
		total += time.Since(start)
		b.StopTimer()
		cancel()
		if err := <-done; err != context.Canceled {
			b.Fatalf("producer: %v", err)
		}
		if s.Rows != seedBenchRows {
			b.Fatalf("seeded %d rows, want %d", s.Rows, seedBenchRows)
		}
		b.StartTimer()
	}
	b.StopTimer()
	seedRate := float64(seedBenchRows) * float64(b.N) / total.Seconds()
	b.ReportMetric(seedRate, "seed_rows/s")
	b.ReportMetric(selectRate, "select_rows/s")
	b.Logf("seed %.0f rows/s; a plain SELECT of the same table %.0f rows/s (the seed runs at %.0f%% of it)",
		seedRate, selectRate, 100*seedRate/selectRate)
}

// seedSelectRate reads table big once with a plain SELECT, scanning every
// row into Go values, and returns the rows read per second.
func seedSelectRate(b *testing.B, db *sql.DB) float64 {
	start := time.Now()
	rows, err := db.Query("SELECT id, v, n FROM big")
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var (
			id int64
			v  string
			nn sql.NullInt64
		)
		if err := rows.Scan(&id, &v, &nn); err != nil {
			b.Fatal(err)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	if n != seedBenchRows {
		b.Fatalf("SELECT read %d rows, want %d", n, seedBenchRows)
	}
	return float64(n) / time.Since(start).Seconds()
}
