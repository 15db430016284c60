package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/client"
	"github.com/databus-go/databus/internal/dbtest"
)

// pgLargeSlot is the replication slot of TestPostgresLargeTransaction's
// relay.
const pgLargeSlot = "databus_large"

// TestPostgresLargeTransaction: one PostgreSQL transaction of a million
// rows (INSERT ... SELECT generate_series) passes through a relay whose
// buffer (64 MiB) is already full of other windows, and reaches a consumer
// as one whole window of a million events, while the relay's peak resident
// memory stays within buffer + 64 MiB. It is TestMySQLLargeTransaction for
// the PostgreSQL source (same sizes, same counter; the tables live in
// schema big so that the logical source is big.t there too).
//
// The server streams the transaction while it is in progress (it outgrows
// logical_decoding_work_mem, 64MB by default): the adapter, inside the
// relay process, spills it to disk and replays it at its commit as chunks
// the relay spools, so neither holds it in memory. The relay runs as a
// subprocess (`databus relay` with source.postgres), measured by the
// kernel's high-water mark (VmHWM in /proc/<pid>/status), reset just before
// the transaction.
func TestPostgresLargeTransaction(t *testing.T) {
	srv := dbtest.Postgres(t, dbtest.PostgresSettings("shared_buffers=256MB", "max_wal_size=4GB"))
	db := srv.DB(t, "large")
	for _, q := range []string{
		"CREATE SCHEMA big",
		"CREATE TABLE big.t (id int PRIMARY KEY, v int NOT NULL, s char(16) NOT NULL)",
		"CREATE TABLE big.fill (id int PRIMARY KEY, pad varchar(2000) NOT NULL)",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	rp := startPgLargeRelay(t, srv, "large")
	base := "http://" + rp.addr

	// Fill the buffer past its bound with ordinary windows, so that the
	// large one arrives in a full buffer and eviction runs throughout.
	start := time.Now()
	for i := range fillTxns {
		q := fmt.Sprintf("INSERT INTO big.fill SELECT g, repeat('x', %d) FROM generate_series(%d, %d) g", fillPad, i*fillRowsPerTxn+1, (i+1)*fillRowsPerTxn)
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	endFill := pgLargeLSN(t, db)
	waitLarge(t, 30*time.Second, "the relay to capture the filler transactions", func() bool {
		return largeRelayBuffer(t, base).MaxSCN >= endFill // heartbeats pass the end
	})
	filled := largeRelayBuffer(t, base)
	t.Logf("filled the buffer in %v: %d windows, %.1f MiB of %.0f MiB, low watermark %d",
		time.Since(start).Round(time.Millisecond), filled.Windows, largeMiB(filled.Bytes), largeMiB(filled.MaxBytes), filled.LowWatermark)
	if filled.LowWatermark == 0 || filled.Bytes < largeBuffer*3/4 {
		t.Fatalf("the buffer is not full: %+v", filled)
	}

	// The consumer starts at the newest window held and counts.
	h := &largeCounter{}
	c, err := client.New([]string{base}, h, client.WithStart(checkpoint.At(filled.MaxSCN)), client.WithWait(time.Second),
		client.WithRelayRetry(0, 10*time.Millisecond, 500*time.Millisecond), client.WithRequestTimeout(60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil && ctx.Err() == nil {
			t.Errorf("client: %v", err)
		}
	}()

	hwmFill := rp.status(t, "VmHWM")
	// From here VmHWM is the peak while the large transaction passes.
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", rp.cmd.Process.Pid), []byte("5"), 0); err != nil {
		t.Fatalf("resetting the relay's VmHWM: %v", err)
	}
	start = time.Now()
	if _, err := db.Exec(fmt.Sprintf("INSERT INTO big.t SELECT g, g %% 1000, left(md5(g::text), 16) FROM generate_series(1, %d) g", largeRows)); err != nil {
		t.Fatal(err)
	}
	committed := time.Since(start)
	waitLarge(t, largeTimeout, "the consumer to receive the large window", func() bool {
		select {
		case err := <-done:
			t.Fatalf("client stopped: %v", err)
		default:
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.bigEvents >= largeRows
	})
	elapsed := time.Since(start)
	hwm, rss, rssFile := rp.status(t, "VmHWM"), rp.status(t, "VmRSS"), rp.status(t, "RssFile")
	after := largeRelayBuffer(t, base)
	metrics := largeRelayMetrics(t, base)
	var streamed int64
	if err := db.QueryRow("SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = $1", pgLargeSlot).Scan(&streamed); err != nil {
		t.Fatal(err)
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	if h.bigWindows != 1 || h.bigEvents != largeRows || h.otherEvents != 0 {
		t.Errorf("the consumer saw %d windows of big.t holding %d events (and %d other events); want one window of %d",
			h.bigWindows, h.bigEvents, h.otherEvents, largeRows)
	}
	if want := int64(largeRows) * (largeRows + 1) / 2; h.keySum != want || h.outOfOrder != 0 {
		t.Errorf("key sum %d, want %d; %d keys out of order", h.keySum, want, h.outOfOrder)
	}
	slot := `{slot="` + pgLargeSlot + `"}`
	t.Logf("transaction: %d rows committed in %v; delivered whole %v after the commit started (%.0f rows/s end to end), %v after it returned (%.0f rows/s through the relay)",
		largeRows, committed.Round(time.Millisecond), elapsed.Round(time.Millisecond), largeRows/elapsed.Seconds(),
		(elapsed - committed).Round(time.Millisecond), largeRows/(elapsed-committed).Seconds())
	t.Logf("window: %.1f MiB of frames; the server streamed %d transaction(s); the source emitted %s chunks; relay spilled %s window(s), %s chunks in; buffer after: %d windows, %.1f MiB in memory, %.1f MiB spilled",
		largeMiB(h.windowBytes), streamed, metrics["databus_source_postgres_chunks_total"+slot], metrics["databus_relay_windows_spilled_total"], metrics["databus_relay_chunks_in_total"],
		after.Windows, largeMiB(after.Bytes), largeMiB(after.SpillBytes))
	heap, _ := strconv.ParseFloat(metrics["go_memstats_heap_inuse_bytes"], 64)
	t.Logf("relay memory: peak RSS (VmHWM) %.1f MiB while the transaction passed, %.1f MiB while the buffer filled; now VmRSS %.1f MiB (%.1f MiB of it mapped files), Go heap in use %.1f MiB; bound %.0f MiB (buffer %.0f MiB + %.0f MiB)",
		largeMiB(hwm), largeMiB(hwmFill), largeMiB(rss), largeMiB(rssFile), heap/(1<<20), largeMiB(largeBuffer+largeHeadroom), largeMiB(largeBuffer), largeMiB(largeHeadroom))
	if streamed < 1 {
		t.Errorf("the server streamed no transaction: the adapter's spill path was not exercised")
	}
	if _, ok := metrics["databus_source_postgres_slot_lag_bytes"+slot]; !ok {
		t.Errorf("the relay's /metrics has no databus_source_postgres_slot_lag_bytes%s", slot)
	}
	if h.windowBytes <= largeBuffer {
		t.Errorf("the window (%d bytes) is not larger than the buffer: the test proves nothing", h.windowBytes)
	}
	if hwm > largeBuffer+largeHeadroom {
		t.Errorf("relay peak RSS %.1f MiB while the transaction passed exceeds buffer + headroom (%.0f MiB)", largeMiB(hwm), largeMiB(largeBuffer+largeHeadroom))
	}
}

// startPgLargeRelay starts `databus relay` over database dbName of srv, as
// a subprocess, and waits until it is healthy.
func startPgLargeRelay(t *testing.T, srv *dbtest.PostgresServer, dbName string) *largeRelay {
	return startSubprocessRelay(t, largeBuffer, fmt.Sprintf(`  postgres:
    connString: %s
    tables: [big.t, big.fill]
    slot: %s
`, srv.ConnString(dbName), pgLargeSlot))
}

// pgLargeLSN is the server's current WAL position: every window committed
// before is at or below it.
func pgLargeLSN(t *testing.T, db *sql.DB) uint64 {
	t.Helper()
	var s string
	if err := db.QueryRow("SELECT pg_current_wal_lsn()::text").Scan(&s); err != nil {
		t.Fatal(err)
	}
	var hi, lo uint32
	if _, err := fmt.Sscanf(s, "%X/%X", &hi, &lo); err != nil {
		t.Fatalf("LSN %q: %v", s, err)
	}
	return uint64(hi)<<32 | uint64(lo)
}
