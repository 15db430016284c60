package relay

import (
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/databus-go/databus/relay/buffer"
)

// metrics are the relay's Prometheus series, all named databus_relay_*.
type metrics struct {
	eventsIn, bytesIn, windowsIn    prometheus.Counter
	eventsOut, bytesOut, windowsOut prometheus.Counter
	duplicates                      prometheus.Counter
	chunksIn, abandoned             prometheus.Counter
	windowsSpilled                  prometheus.Counter
	captureErrors                   prometheus.Counter
	captureStopped                  prometheus.Gauge
	lastCapture                     prometheus.Gauge
	persistErrors, releaseErrors    prometheus.Counter
	connected                       prometheus.Gauge
	clientLagSCN, clientLagSeconds  *prometheus.GaugeVec
	httpErrors                      *prometheus.CounterVec
}

const namespace, subsystem = "databus", "relay"

func newMetrics(reg prometheus.Registerer, buf *buffer.Buffer) (*metrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Subsystem: subsystem, Name: name, Help: help})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Subsystem: subsystem, Name: name, Help: help})
	}
	m := &metrics{
		eventsIn:       counter("events_in_total", "Data events captured from the source."),
		bytesIn:        counter("bytes_in_total", "Encoded bytes of the windows captured."),
		windowsIn:      counter("windows_in_total", "Windows captured (heartbeats included)."),
		eventsOut:      counter("events_out_total", "Data events served to clients."),
		bytesOut:       counter("bytes_out_total", "Bytes of windows served to clients (binary or JSON)."),
		windowsOut:     counter("windows_out_total", "Windows served to clients."),
		duplicates:     counter("windows_duplicate_total", "Windows the source emitted again at or below the newest SCN held; they are not appended twice."),
		chunksIn:       counter("chunks_in_total", "Chunks of large windows spooled to disk while their transaction was still arriving."),
		abandoned:      counter("windows_abandoned_total", "Large windows whose chunks were discarded before their final chunk (the source emits them again)."),
		windowsSpilled: counter("windows_spilled_total", "Windows larger than buffer.maxBytes/16, held in files under the state directory's spill/."),
		captureErrors:  counter("capture_errors_total", "Errors of the source or of capture; capture retries all but the permanent ones."),
		captureStopped: gauge("capture_stopped", "1 when capture has stopped for good (see /healthz for why)."),
		lastCapture:    gauge("last_capture_timestamp_seconds", "Wall-clock time of the last window captured."),
		persistErrors:  counter("persist_errors_total", "Failed writes of the state directory's files."),
		releaseErrors:  counter("release_errors_total", "Failed Release calls to the source."),
		connected:      gauge("clients_connected", "Stream requests in flight."),
		clientLagSCN: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Subsystem: subsystem,
			Name: "client_lag_scn", Help: "Newest SCN held minus the checkpoint SCN of the client's last request."}, []string{"client"}),
		clientLagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Subsystem: subsystem,
			Name: "client_lag_seconds", Help: "Commit time of the newest window minus that of the window at the client's checkpoint."}, []string{"client"}),
		httpErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Subsystem: subsystem,
			Name: "http_errors_total", Help: "Error responses by stable error code."}, []string{"code"}),
	}
	cs := []prometheus.Collector{
		m.eventsIn, m.bytesIn, m.windowsIn, m.eventsOut, m.bytesOut, m.windowsOut, m.duplicates,
		m.chunksIn, m.abandoned, m.windowsSpilled,
		m.captureErrors, m.captureStopped, m.lastCapture, m.persistErrors, m.releaseErrors,
		m.connected, m.clientLagSCN, m.clientLagSeconds, m.httpErrors, bufferCollector{buf},
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs {
				if done == c {
					break
				}
				reg.Unregister(done)
			}
			return nil, err
		}
	}
	return m, nil
}

// bufferCollector reads the buffer's gauges at scrape time, from one
// consistent snapshot.
type bufferCollector struct{ buf *buffer.Buffer }

func desc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, subsystem, name), help, nil, nil)
}

var (
	descBufBytes    = desc("buffer_bytes", "Bytes held by the event buffer in memory, per-window overhead included.")
	descBufMax      = desc("buffer_max_bytes", "Configured bound of the event buffer's memory.")
	descSpillBytes  = desc("buffer_spill_bytes", "Bytes of the spilled windows' files.")
	descSpillMax    = desc("buffer_spill_max_bytes", "Configured bound of the spilled windows' files (buffer.maxSpillBytes).")
	descSpilled     = desc("buffer_spilled_windows", "Windows held in files rather than in memory.")
	descBufWindows  = desc("buffer_windows", "Windows held by the event buffer.")
	descBufEvents   = desc("buffer_events", "Data events held by the event buffer.")
	descBufMinSCN   = desc("buffer_min_scn", "SCN of the oldest window held (0 when empty).")
	descBufMaxSCN   = desc("buffer_max_scn", "SCN of the newest window held (0 when empty).")
	descLowWM       = desc("low_watermark_scn", "Oldest checkpoint SCN the relay can serve.")
	descCaptureLagS = desc("capture_lag_seconds", "Now minus the commit time of the newest window held.")
)

func (c bufferCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBufBytes, descBufMax, descSpillBytes, descSpillMax, descSpilled, descBufWindows, descBufEvents, descBufMinSCN, descBufMaxSCN, descLowWM, descCaptureLagS} {
		ch <- d
	}
}

func (c bufferCollector) Collect(ch chan<- prometheus.Metric) {
	in := c.buf.Info()
	g := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	g(descBufBytes, float64(in.Bytes))
	g(descBufMax, float64(in.MaxBytes))
	g(descSpillBytes, float64(in.SpillBytes))
	g(descSpillMax, float64(in.MaxSpillBytes))
	g(descSpilled, float64(in.SpilledWindows))
	g(descBufWindows, float64(in.Windows))
	g(descBufEvents, float64(in.Events))
	g(descBufMinSCN, float64(in.MinSCN))
	g(descBufMaxSCN, float64(in.MaxSCN))
	g(descLowWM, float64(in.LowWatermark))
	if in.Windows > 0 {
		g(descCaptureLagS, max(0, time.Since(time.Unix(0, in.NewestTimestamp)).Seconds()))
	}
}

// Client tracking bounds.
const (
	clientIdle = 5 * time.Minute // a client's series are dropped after this long without a request
	maxClients = 1000            // beyond this many distinct ids, new ones are counted as "_other"
	otherID    = "_other"
)

// clientInfo is what the relay knows about one consumer, for metrics and the
// status page.
type clientInfo struct {
	ID         string
	Remote     string
	LastSeen   time.Time
	Checkpoint uint64
	LagSCN     uint64
	LagSeconds float64
	InFlight   int
}

// clients tracks consumers by id and bounds the cardinality of their series.
type clients struct {
	m *metrics

	mu sync.Mutex
	// byID holds every client seen within clientIdle.
	// Invariant: len(byID) <= maxClients+1; an id has lag series iff it is here.
	byID map[string]*clientInfo
}

func newClients(m *metrics) *clients {
	return &clients{m: m, byID: map[string]*clientInfo{}}
}

// begin records the start of a stream request and returns the id under
// which it is tracked.
func (c *clients) begin(id, remote string, now time.Time) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ci, ok := c.byID[id]
	if !ok {
		if len(c.byID) >= maxClients {
			id = otherID
			ci = c.byID[id]
		}
		if ci == nil {
			ci = &clientInfo{ID: id}
			c.byID[id] = ci
		}
	}
	ci.Remote, ci.LastSeen = remote, now
	ci.InFlight++
	c.m.connected.Inc()
	return id
}

// lag records a client's position.
func (c *clients) lag(id string, checkpoint, lagSCN uint64, lagSeconds float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ci := c.byID[id]
	if ci == nil {
		return
	}
	ci.Checkpoint, ci.LagSCN, ci.LagSeconds = checkpoint, lagSCN, lagSeconds
	c.m.clientLagSCN.WithLabelValues(id).Set(float64(lagSCN))
	c.m.clientLagSeconds.WithLabelValues(id).Set(lagSeconds)
}

func (c *clients) end(id string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ci := c.byID[id]; ci != nil {
		ci.InFlight--
		ci.LastSeen = now
	}
	c.m.connected.Dec()
}

// expire drops the clients idle since before now-clientIdle, and their series.
func (c *clients) expire(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, ci := range c.byID {
		if ci.InFlight == 0 && now.Sub(ci.LastSeen) > clientIdle {
			delete(c.byID, id)
			c.m.clientLagSCN.DeleteLabelValues(id)
			c.m.clientLagSeconds.DeleteLabelValues(id)
		}
	}
}

// snapshot returns the clients sorted by id.
func (c *clients) snapshot() []clientInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]clientInfo, 0, len(c.byID))
	for _, ci := range c.byID {
		out = append(out, *ci)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
