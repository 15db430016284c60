package server

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/databus-go/databus/bootstrap/store"
)

// metrics are the server's Prometheus series, all named
// databus_bootstrap_server_*.
type metrics struct {
	requests                         *prometheus.CounterVec // endpoint, status
	duration                         *prometheus.HistogramVec
	errors                           *prometheus.CounterVec // code
	rowsOut, windowsOut, bytesOut    prometheus.Counter
	snapshotPages, catchupPages      prometheus.Counter
	storeUp, headSCN, lowWM, windows *prometheus.Desc
	st                               store.Store
}

const namespace, subsystem = "databus", "bootstrap_server"

func newMetrics(reg prometheus.Registerer, st store.Store) (*metrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Subsystem: subsystem, Name: name, Help: help})
	}
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, subsystem, name), help, nil, nil)
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: subsystem,
			Name: "requests_total", Help: "HTTP requests by endpoint and status code."}, []string{"endpoint", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Subsystem: subsystem,
			Name: "request_seconds", Help: "Time to answer an HTTP request, body written, by endpoint.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"endpoint"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: subsystem,
			Name: "errors_total", Help: "Error responses by stable error code."}, []string{"code"}),
		rowsOut:       counter("rows_served_total", "Snapshot rows served."),
		windowsOut:    counter("windows_served_total", "Log windows served by catch-up."),
		bytesOut:      counter("bytes_served_total", "Bytes of frames served by snapshot and catch-up."),
		snapshotPages: counter("snapshot_pages_total", "Snapshot pages served."),
		catchupPages:  counter("catchup_pages_total", "Catch-up pages served."),
		storeUp:       desc("store_up", "1 when the store answered the scrape's State call, else 0."),
		headSCN:       desc("store_head_scn", "SCN of the last window applied to the store."),
		lowWM:         desc("store_low_watermark_scn", "Smallest checkpoint SCN the store's log can serve."),
		windows:       desc("store_log_windows", "Windows held in the store's log."),
		st:            st,
	}
	cs := []prometheus.Collector{m.requests, m.duration, m.errors, m.rowsOut, m.windowsOut, m.bytesOut,
		m.snapshotPages, m.catchupPages, storeCollector{m}}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return nil, err
		}
	}
	return m, nil
}

// storeCollector reads the store's state at scrape time, so the figures are
// never staler than the scrape.
type storeCollector struct{ m *metrics }

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.m.storeUp
	ch <- c.m.headSCN
	ch <- c.m.lowWM
	ch <- c.m.windows
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	st, err := c.m.st.State(ctx)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.m.storeUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.m.storeUp, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(c.m.headSCN, prometheus.GaugeValue, float64(st.Head))
	ch <- prometheus.MustNewConstMetric(c.m.lowWM, prometheus.GaugeValue, float64(st.LowWatermark))
	ch <- prometheus.MustNewConstMetric(c.m.windows, prometheus.GaugeValue, float64(st.Windows))
}

// instrument counts the requests of one endpoint by status and times them.
// Its label values are fixed strings, so the series stay bounded whatever
// paths clients ask for.
func (m *metrics) instrument(endpoint string, h http.Handler) http.Handler {
	dur := m.duration.WithLabelValues(endpoint)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, req)
		m.requests.WithLabelValues(endpoint, strconv.Itoa(sw.status)).Inc()
		dur.Observe(time.Since(start).Seconds())
	})
}

// statusWriter records the status of a response. Unwrap lets
// http.ResponseController reach the connection (write deadlines, flushes).
type statusWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wroteHeader = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
