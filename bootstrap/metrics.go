package bootstrap

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the producer's Prometheus metrics, namespace
// databus_bootstrap_.
type metrics struct {
	windows, events, batches prometheus.Counter
	applyErrors, restarts    prometheus.Counter
	batchSeconds             prometheus.Histogram
	head, lag, lowWatermark  prometheus.Gauge
	purges, purgeErrors      prometheus.Counter
	purgedWindows            prometheus.Counter
	purgedTombstones         prometheus.Counter
	seedRows                 *prometheus.CounterVec
	seedEstimated, seedDone  *prometheus.GaugeVec
	seedChunks, seedRedos    prometheus.Counter
	collectors               []prometheus.Collector
}

// newMetrics creates the metrics and registers them with reg (when not
// nil); a registration conflict (a second producer on one registry) is an
// error.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns = "databus_bootstrap"
	m := &metrics{}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: name, Help: help})
		m.collectors = append(m.collectors, c)
		return c
	}
	gauge := func(name, help string) prometheus.Gauge {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: name, Help: help})
		m.collectors = append(m.collectors, g)
		return g
	}
	m.windows = counter("windows_applied_total", "Windows committed to the bootstrap store (heartbeats included).")
	m.events = counter("events_applied_total", "Data events committed to the bootstrap store (seeded rows included).")
	m.batches = counter("batches_total", "Store transactions committed by the producer.")
	m.applyErrors = counter("apply_errors_total", "Failed store transactions (each restarts the stream from the store's head).")
	m.restarts = counter("restarts_total", "Restarts of the stream from the store's head after a failure.")
	m.batchSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "batch_seconds",
		Help: "Time to commit one batch to the store.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)})
	m.collectors = append(m.collectors, m.batchSeconds)
	m.head = gauge("head_scn", "SCN of the last window committed to the store.")
	m.lag = gauge("relay_lag_scn", "How far the store's head is behind the newest SCN the relay holds, in SCN units.")
	m.lowWatermark = gauge("low_watermark_scn", "Smallest checkpoint SCN the store's log serves, after the last purge.")
	m.purges = counter("purges_total", "Purges of the store.")
	m.purgeErrors = counter("purge_errors_total", "Failed purges of the store.")
	m.purgedWindows = counter("purged_windows_total", "Log windows deleted by purges.")
	m.purgedTombstones = counter("purged_tombstones_total", "Snapshot tombstones deleted by purges.")
	m.seedRows = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "seed_rows_total",
		Help: "Rows copied by the seeder and committed, by table."}, []string{"table"})
	m.seedEstimated = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "seed_rows_estimated",
		Help: "The source's estimate of a seeded table's rows."}, []string{"table"})
	m.seedDone = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "seed_done",
		Help: "1 when the table's latest seed run is done, 0 while it is queued or running."}, []string{"table"})
	m.collectors = append(m.collectors, m.seedRows, m.seedEstimated, m.seedDone)
	m.seedChunks = counter("seed_chunks_total", "Seed chunks committed.")
	m.seedRedos = counter("seed_chunk_redos_total", "Seed chunks read again: void (a restart, a TRUNCATE or DDL of the table) or timed out.")
	if reg != nil {
		for _, c := range m.collectors {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("databus: registering bootstrap producer metrics: %w", err)
			}
		}
	}
	return m, nil
}
