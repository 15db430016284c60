package client

import (
	"errors"
	"testing"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

func TestDecoderRejects(t *testing.T) {
	c := codecOf(t, personV1())
	ev := func(scn uint64, id int64) event.Event { return personEvent(t, c, scn, id) }
	join := func(ws ...fakeWindow) []byte {
		var b []byte
		for _, w := range ws {
			for _, f := range w.frames {
				b = append(b, f...)
			}
		}
		return b
	}
	good := window(t, 10, ev(10, 1))
	badCount := window(t, 20, ev(20, 2))
	badCount.frames[len(badCount.frames)-1] = mustFrame(t, event.EndOfWindow(20, 0, 2, ""))
	mixed := window(t, 20, ev(20, 2), ev(21, 3))
	unknown := ev(20, 2)
	unknown.SchemaVersion = 9
	v2 := personV2()
	change, err := event.NewSchemaChange(20, 0, event.SchemaChange{Source: 1, Name: "demo.person", Version: 2, Key: []string{"id"}, Avro: v2.AvroSchema()})
	if err != nil {
		t.Fatal(err)
	}
	liar := change
	liar.SchemaVersion = 3

	for _, tc := range []struct {
		name       string
		body       []byte
		refreshed  bool
		exact      bool
		wantN      int // windows decoded before the error
		wantErr    error
		wantSchema bool // an *unknownSchemaError
	}{
		{"whole windows", join(good, window(t, 20)), false, true, 2, nil, false},
		{"out of order", join(good, window(t, 5, ev(5, 2))), false, false, 1, ErrProtocol, false},
		{"repeated window", join(good, good), false, false, 1, ErrProtocol, false},
		{"frame of another scn inside a window", join(good, mixed), false, false, 1, ErrProtocol, false},
		{"count differs without filters", join(good, badCount), false, true, 1, ErrProtocol, false},
		{"count may differ with filters", join(good, badCount), false, false, 2, nil, false},
		{"ends inside a window", join(good, badCount)[:len(join(good))+len(badCount.frames[0])], false, false, 1, ErrProtocol, false},
		{"ends inside a frame", join(good)[:20], false, false, 0, ErrProtocol, false},
		{"unknown version", join(good, window(t, 20, unknown)), false, false, 1, ErrProtocol, true},
		{"unknown version after a refresh", join(good, window(t, 20, unknown)), true, false, 1, ErrProtocol, false},
		{"schema change, not refreshed", join(good, window(t, 20, change)), false, false, 1, ErrProtocol, true},
		{"schema change from the frame", join(good, window(t, 20, change)), true, false, 2, nil, false},
		{"schema change header disagrees", join(good, window(t, 20, liar)), true, false, 1, ErrProtocol, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := schema.NewRegistry()
			if _, err := reg.Put(personV1()); err != nil {
				t.Fatal(err)
			}
			d := windowDecoder{reg: reg, exactCounts: tc.exact}
			ws, n, err := d.decode(tc.body, tc.refreshed)
			if len(ws) != tc.wantN || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("decode = %d windows, %v; want %d, %v", len(ws), err, tc.wantN, tc.wantErr)
			}
			if want := len(join(good)); tc.wantN == 1 && n != want {
				t.Errorf("consumed %d bytes, want %d (the first window)", n, want)
			}
			var us *unknownSchemaError
			if errors.As(err, &us) != tc.wantSchema {
				t.Errorf("error %v: unknown-schema %v, want %v", err, !tc.wantSchema, tc.wantSchema)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		err  error
		want errClass
	}{
		{&SCNNotHeldError{}, classNotHeld},
		{&RelayError{Status: 400}, classFatal},
		{&statusError{status: 503}, classRetry},
		{ErrProtocol, classRetry},
		{errors.New("dial tcp: connection refused"), classRetry},
	} {
		if got := classify(ctx, tc.err); got != tc.want {
			t.Errorf("classify(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
