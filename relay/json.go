package relay

import "github.com/databus-go/databus/event"
import "github.com/databus-go/databus/eventjson"

// renderJSON appends the JSON lines of one window's frames (docs/PROTOCOL.md)
// and returns the number of data events.
func (r *Relay) renderJSON(dst, data []byte) ([]byte, int) {
	events := 0
	for len(data) > 0 {
		e, n, err := event.Decode(data)
		if err != nil { // cannot happen: the buffer holds only frames the relay encoded
			r.log.Error("undecodable frame in the buffer", "err", err)
			return dst, events
		}
		data = data[n:]
		dst = eventjson.Append(dst, &e, r.reg)
		if e.Kind == event.KindData {
			events++
		}
	}
	return dst, events
}
