package postgres

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/source"
)

// gather returns the registry's series as "name{label=value,...}" → value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(labels)
			name := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.GetGauge() != nil:
				out[name] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				out[name] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// TestMetrics registers a Source with a Prometheus registry and checks its
// series after traffic: positions, lag, heartbeats, reconnections, chunks
// and an open streamed transaction.
func TestMetrics(t *testing.T) {
	t.Parallel()
	srv := dbtest.SharedPostgres(t)
	e := newEnv(t, srv, "public.t")
	e.cfg.ConnString += "&logical_decoding_work_mem=64kB"
	e.cfg.ChunkEvents = 1000
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY, v text)")
	s, _ := open(t, e.cfg)
	reg := prometheus.NewRegistry()
	if err := reg.Register(s); err != nil {
		t.Fatal(err)
	}
	l := "{slot=" + e.name + "}"
	m := gather(t, reg)
	for _, name := range []string{"slot_lag_bytes", "confirmed_lsn", "released_lsn", "server_wal_lsn", "last_scn",
		"heartbeat_age_seconds", "streaming", "reconnects_total", "chunks_total", "open_transactions",
		"open_transaction_bytes", "open_transaction_spilled_bytes"} {
		if v, ok := m["databus_source_postgres_"+name+l]; !ok || v != 0 {
			t.Errorf("before Run: %s = %v (present %v), want 0", name, v, ok)
		}
	}

	r := startRun(t, s, source.Position{})
	e.exec(t, "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5000) g")
	ws := dataWindows(r.waitSCN(t, e.mark(t), 30*time.Second))
	if len(ws) != 1 {
		t.Fatalf("%d data windows", len(ws))
	}
	if err := s.Release(context.Background(), ws[0].Position); err != nil {
		t.Fatal(err)
	}
	open := begin(t, e.db)
	txExec(t, open, "INSERT INTO t SELECT g, 'open' FROM generate_series(10001, 15000) g")

	// The heartbeat goroutine refreshes the slot's figures.
	var got map[string]float64
	deadline := time.Now().Add(20 * time.Second)
	for {
		got = gather(t, reg)
		if got["databus_source_postgres_confirmed_lsn"+l] == float64(ws[0].SCN) && got["databus_source_postgres_open_transaction_spilled_bytes"+l] > 0 &&
			got["databus_source_postgres_server_wal_lsn"+l] > float64(ws[0].SCN) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics: %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := s.Stats()
	check := func(name string, ok bool) {
		t.Helper()
		if !ok {
			t.Errorf("%s = %v (stats %+v)", name, got["databus_source_postgres_"+name+l], st)
		}
	}
	g := func(name string) float64 { return got["databus_source_postgres_"+name+l] }
	check("released_lsn", g("released_lsn") == float64(ws[0].SCN))
	check("slot_lag_bytes", g("slot_lag_bytes") == g("server_wal_lsn")-g("confirmed_lsn"))
	check("last_scn", g("last_scn") > float64(ws[0].SCN)) // heartbeats since
	check("heartbeat_age_seconds", g("heartbeat_age_seconds") >= 0 && g("heartbeat_age_seconds") < 10)
	check("streaming", g("streaming") == 1)
	check("chunks_total", g("chunks_total") >= 4)
	check("open_transactions", g("open_transactions") == 1)
	check("open_transaction_bytes", g("open_transaction_bytes") >= g("open_transaction_spilled_bytes"))
	if v := got["databus_source_postgres_slot_wal_status{slot="+e.name+",status=reserved}"]; v != 1 {
		t.Errorf("slot_wal_status{status=reserved} = %v", v)
	}

	// A reconnection is counted.
	if _, err := e.db.Exec("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", e.name); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); gather(t, reg)["databus_source_postgres_reconnects_total"+l] < 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("reconnects_total did not move")
		}
	}
	if err := open.Rollback(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); gather(t, reg)["databus_source_postgres_open_transaction_bytes"+l] != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("open_transaction_bytes after the rollback", gather(t, reg))
		}
	}
	r.stop(t)
	if v := gather(t, reg)["databus_source_postgres_streaming"+l]; v != 0 {
		t.Errorf("streaming after Run: %v", v)
	}
}
