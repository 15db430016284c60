package client

import (
	"errors"
	"fmt"
	"time"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// unknownSchemaError says that a frame needs a schema version the registry
// does not hold; the puller fetches the relay's schemas and decodes again
// from the start of that frame's window.
type unknownSchemaError struct {
	source  uint32
	version uint16
	change  bool // announced by a schema-change frame rather than used by a data frame
}

func (e *unknownSchemaError) Error() string {
	return fmt.Sprintf("%v: source %d version %d is not in the relay's schemas", ErrProtocol, e.source, e.version)
}

func (e *unknownSchemaError) Unwrap() error { return ErrProtocol }

// windowDecoder turns the body of a /v1/stream response into whole windows.
// It does no I/O: the registry is its only outside state, and it only ever
// adds to it (schema-change frames).
type windowDecoder struct {
	reg *schema.Registry
	// after is the SCN of the last window decoded; the next must be newer.
	after uint64
	// exactCounts: the client has no filters, so every window must hold as
	// many data events as its end-of-window frame says the source had.
	exactCounts bool

	// last is a one-entry cache of registry lookups.
	last *schema.Entry
}

// decode parses the whole windows at the start of body. It returns them, the
// number of bytes they took, and why it stopped before the end of body:
// nil when body ended exactly after a window; an *unknownSchemaError when a
// frame needs a schema the registry lacks (n is then the start of that
// frame's window); an error wrapping ErrProtocol otherwise.
//
// When refreshed is true the caller has just fetched the relay's schemas: a
// schema-change frame for a version still unknown is then registered from
// the frame itself, and a data frame of an unknown version is a protocol
// error.
//
// Windows' byte slices alias body.
func (d *windowDecoder) decode(body []byte, refreshed bool) (ws []*Window, n int, err error) {
	for n < len(body) {
		w, size, err := d.decodeWindow(body[n:], refreshed)
		if err != nil {
			return ws, n, err
		}
		ws = append(ws, w)
		n += size
		d.after = w.SCN
	}
	return ws, n, nil
}

// decodeWindow decodes the window at the start of b in two passes: the
// first walks frame headers (each checked by its own checksum before its
// length is trusted) to find the end-of-window frame and count the data
// events; the second decodes every frame, checking body checksums, straight
// into the window's events, allocated together.
func (d *windowDecoder) decodeWindow(b []byte, refreshed bool) (*Window, int, error) {
	var (
		size, data int
		scn        uint64
	)
	for {
		if size == len(b) {
			return nil, 0, fmt.Errorf("%w: response ends inside window scn %d", ErrProtocol, scn)
		}
		n, err := event.FrameLen(b[size:])
		if err == nil && n > len(b)-size {
			err = event.ErrShort
		}
		if err != nil {
			if errors.Is(err, event.ErrShort) {
				return nil, 0, fmt.Errorf("%w: response ends inside a frame", ErrProtocol)
			}
			return nil, 0, fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		h, _ := event.PeekHeader(b[size:])
		switch {
		case size == 0 && h.SCN <= d.after:
			return nil, 0, fmt.Errorf("%w: window scn %d does not follow scn %d", ErrProtocol, h.SCN, d.after)
		case size == 0:
			scn = h.SCN
		case h.SCN != scn:
			return nil, 0, fmt.Errorf("%w: frame of scn %d inside window scn %d", ErrProtocol, h.SCN, scn)
		}
		size += n
		if h.Kind == event.KindData {
			data++
		}
		if h.Kind == event.KindEndOfWindow {
			break
		}
	}

	w := &Window{SCN: scn, frames: b[:size:size]}
	var evs []Event
	if data > 0 {
		evs = make([]Event, 0, data)
		w.Events = make([]*Event, 0, data)
	}
	for off := 0; off < size; {
		f, n, err := event.Decode(b[off:size])
		if err != nil {
			return nil, 0, fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		off += n
		switch f.Kind {
		case event.KindSchemaChange:
			ch, err := d.applyChange(&f, refreshed)
			if err != nil {
				return nil, 0, err
			}
			ch.At = len(w.Events)
			w.Changes = append(w.Changes, ch)
		case event.KindData:
			entry, ok := d.lookup(f.Source, f.SchemaVersion)
			if !ok && refreshed {
				return nil, 0, fmt.Errorf("%w: data event of source %d uses schema version %d, which the relay does not list", ErrProtocol, f.Source, f.SchemaVersion)
			}
			if !ok {
				return nil, 0, &unknownSchemaError{source: f.Source, version: f.SchemaVersion}
			}
			evs = append(evs, makeEvent(&f, entry))
			w.Events = append(w.Events, &evs[len(evs)-1])
		case event.KindEndOfWindow:
			count, txid, _ := f.WindowInfo()
			if d.exactCounts && int(count) != data {
				return nil, 0, fmt.Errorf("%w: window scn %d has %d events, its end-of-window frame says %d", ErrProtocol, scn, data, count)
			}
			w.Timestamp, w.TxID = time.Unix(0, f.Timestamp).UTC(), txid
		}
	}
	return w, size, nil
}

// makeEvent is the client's view of data frame f, whose schema is entry.
func makeEvent(f *event.Event, entry *schema.Entry) Event {
	return Event{
		SCN:           f.SCN,
		Source:        entry.Name,
		SourceID:      f.Source,
		SchemaVersion: f.SchemaVersion,
		Op:            f.Op,
		Timestamp:     time.Unix(0, f.Timestamp).UTC(),
		Key:           f.Key,
		Payload:       f.Payload,
		Before:        f.Before,
		HasBefore:     f.HasBefore,
		entry:         entry,
	}
}

func (d *windowDecoder) lookup(id uint32, version uint16) (*schema.Entry, bool) {
	if l := d.last; l != nil && l.ID == id && l.Version == version {
		return l, true
	}
	e, ok := d.reg.Get(id, version)
	if ok {
		d.last = e
	}
	return e, ok
}

// applyChange decodes a schema-change frame once: it registers the version
// it announces, if the registry does not hold it yet, and returns it with
// the frame's DDL signal as a Change (At unset).
func (d *windowDecoder) applyChange(e *event.Event, refreshed bool) (Change, error) {
	sc, err := e.SchemaChange()
	if err != nil {
		return Change{}, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	t, err := d.changeTable(e, sc, refreshed)
	if err != nil {
		return Change{}, err
	}
	return Change{Table: t, DDL: sc.DDL, Truncate: sc.Truncate, Drop: sc.Drop, RenamedFrom: sc.RenamedFrom, RenamedTo: sc.RenamedTo}, nil
}

// changeTable returns the table version a schema-change frame announces,
// registering it when the relay did not list it.
func (d *windowDecoder) changeTable(e *event.Event, sc event.SchemaChange, refreshed bool) (schema.Table, error) {
	if sc.Source != e.Source || sc.Version != e.SchemaVersion {
		return schema.Table{}, fmt.Errorf("%w: schema-change frame for source %d version %d carries source %d version %d",
			ErrProtocol, e.Source, e.SchemaVersion, sc.Source, sc.Version)
	}
	if entry, ok := d.reg.Get(sc.Source, sc.Version); ok {
		return entry.Table, nil
	}
	if !refreshed {
		// Prefer the relay's own definition (it has the columns' source
		// names and types); the frame only has the Avro schema.
		return schema.Table{}, &unknownSchemaError{source: sc.Source, version: sc.Version, change: true}
	}
	t, err := schema.FromChange(sc)
	if err != nil {
		return schema.Table{}, fmt.Errorf("%w: schema change of %s version %d: %v", ErrProtocol, sc.Name, sc.Version, err)
	}
	entry, err := d.reg.Put(t)
	if err != nil {
		return schema.Table{}, fmt.Errorf("%w: schema change of %s version %d: %v", ErrProtocol, sc.Name, sc.Version, err)
	}
	return entry.Table, nil
}
