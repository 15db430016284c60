package postgres

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics. A Source is a prometheus.Collector: the relay registers it
// with its own registry (see package source), so that one scrape shows the
// relay and its source. Every series has the label slot (the replication
// slot's name). Collect reads the counters behind Stats, which the capture
// loop and the heartbeat goroutine keep up to date (the server's WAL
// position and the slot's confirmed LSN every HeartbeatInterval): it never
// queries the server and never blocks.
//
//	databus_source_postgres_...
//	  slot_lag_bytes                  gauge    server WAL position - slot confirmed_flush_lsn: WAL the server keeps
//	  confirmed_lsn                   gauge    the slot's confirmed_flush_lsn
//	  released_lsn                    gauge    newest position the relay released (what the adapter confirms)
//	  server_wal_lsn                  gauge    the server's pg_current_wal_lsn()
//	  last_scn                        gauge    SCN (commit end LSN) of the newest window emitted
//	  slot_wal_status                 gauge    1 for the slot's wal_status (label status)
//	  heartbeat_age_seconds           gauge    since the newest heartbeat window (since Run started: none yet)
//	  streaming                       gauge    1 while a replication session is up
//	  reconnects_total                counter  sessions started again after a failure
//	  chunks_total                    counter  chunks of large windows emitted
//	  open_transactions               gauge    open transactions being read (plain and streamed)
//	  open_transaction_bytes          gauge    their events not yet emitted, in memory and spilled
//	  open_transaction_spilled_bytes  gauge    the spilled part (spill files)
//
// LSNs are exported as float64, exact below 2^53 (8 PiB of WAL).
type metricDescs struct {
	slotLag, confirmed, released, serverLSN, lastSCN, walStatus, heartbeatAge, streaming,
	reconnects, chunks, openTxns, openBytes, spilledBytes *prometheus.Desc
}

func newMetricDescs() *metricDescs {
	const ns = "databus_source_postgres_"
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(ns+name, help, append([]string{"slot"}, labels...), nil)
	}
	return &metricDescs{
		slotLag:      d("slot_lag_bytes", "WAL the server keeps for the slot: its current WAL position minus the slot's confirmed_flush_lsn, as of the last refresh."),
		confirmed:    d("confirmed_lsn", "The slot's confirmed_flush_lsn, as of the last refresh."),
		released:     d("released_lsn", "The newest position the relay released, which is what the adapter confirms to the slot."),
		serverLSN:    d("server_wal_lsn", "The server's pg_current_wal_lsn(), as of the last refresh."),
		lastSCN:      d("last_scn", "SCN (commit end LSN) of the newest window emitted."),
		walStatus:    d("slot_wal_status", "1 for the slot's wal_status (reserved, extended, unreserved, lost).", "status"),
		heartbeatAge: d("heartbeat_age_seconds", "Time since the newest heartbeat window was emitted (since capture started when none was)."),
		streaming:    d("streaming", "1 while a replication session is up."),
		reconnects:   d("reconnects_total", "Replication sessions started again after a failure."),
		chunks:       d("chunks_total", "Chunks of large windows emitted."),
		openTxns:     d("open_transactions", "Open transactions being read: streamed ones and the plain one in progress."),
		openBytes:    d("open_transaction_bytes", "Size of the events of open transactions not yet emitted, in memory and spilled to disk."),
		spilledBytes: d("open_transaction_spilled_bytes", "Size of the spill files of open streamed transactions."),
	}
}

// Describe implements prometheus.Collector.
func (s *Source) Describe(ch chan<- *prometheus.Desc) {
	d := s.descs
	for _, x := range []*prometheus.Desc{d.slotLag, d.confirmed, d.released, d.serverLSN, d.lastSCN, d.walStatus,
		d.heartbeatAge, d.streaming, d.reconnects, d.chunks, d.openTxns, d.openBytes, d.spilledBytes} {
		ch <- x
	}
}

// Collect implements prometheus.Collector. It reads Stats and never blocks.
func (s *Source) Collect(ch chan<- prometheus.Metric) {
	d, st, slot := s.descs, s.Stats(), s.cfg.Slot
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, append([]string{slot}, labels...)...)
	}
	counter := func(desc *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, slot)
	}
	gauge(d.slotLag, float64(st.SlotLagBytes))
	gauge(d.confirmed, float64(st.SlotConfirmedLSN))
	gauge(d.released, float64(st.ReleasedLSN))
	gauge(d.serverLSN, float64(st.ServerLSN))
	gauge(d.lastSCN, float64(st.LastSCN))
	if st.WALStatus != "" {
		gauge(d.walStatus, 1, st.WALStatus)
	}
	age := st.HeartbeatAge
	if st.LastHeartbeat.IsZero() {
		if started := s.stats.started.Load(); started != 0 {
			age = time.Since(time.Unix(0, started))
		}
	}
	gauge(d.heartbeatAge, age.Seconds())
	streaming := 0.0
	if st.Streaming {
		streaming = 1
	}
	gauge(d.streaming, streaming)
	counter(d.reconnects, float64(st.Reconnects))
	counter(d.chunks, float64(st.Chunks))
	gauge(d.openTxns, float64(st.OpenTransactions))
	gauge(d.openBytes, float64(st.HeldBytes+st.SpilledBytes))
	gauge(d.spilledBytes, float64(st.SpilledBytes))
}
