package checkpoint

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	good := []string{
		`{"v":1,"mode":"online","scn":0}`,
		`{"v":1,"mode":"online","scn":18446744073709551615}`,
		`{"v":1,"mode":"bootstrap_snapshot","scn":0,"bootstrap":{"startScn":5,"targetScn":5,"store":"s1","source":"a.b","after":"x","rows":3}}`,
		`{"v":1,"mode":"bootstrap_snapshot","scn":0,"bootstrap":{"startScn":0,"targetScn":0}}`,
		`{"v":1,"mode":"bootstrap_catchup","scn":7,"bootstrap":{"startScn":5,"targetScn":9,"store":"s1"}}`,
	}
	for _, s := range good {
		c, err := Parse([]byte(s))
		if err != nil {
			t.Errorf("Parse(%s): %v", s, err)
			continue
		}
		again, err := Parse([]byte(c.String()))
		if err != nil || again.String() != c.String() {
			t.Errorf("round trip of %s: %v %s", s, err, again)
		}
	}
	bad := map[string]string{
		``:                                      "EOF",
		`{`:                                     "unexpected EOF",
		`[]`:                                    "cannot unmarshal",
		`{"v":1,"mode":"online","scn":-1}`:      "cannot unmarshal",
		`{"v":1,"mode":"online","scn":"1"}`:     "cannot unmarshal",
		`{"v":2,"mode":"online","scn":1}`:       `"v" is 2`,
		`{"v":1,"scn":1}`:                       `"mode" is missing`,
		`{"v":1,"mode":"offline","scn":1}`:      `"mode" is "offline"`,
		`{"v":1,"mode":"online","scn":1,"x":1}`: `unknown field "x"`,
		`{"v":1,"mode":"online","scn":1} {}`:    "trailing data",
		`{"v":1,"mode":"bootstrap_snapshot","scn":0}`:                                                      `needs field "bootstrap"`,
		`{"v":1,"mode":"online","scn":0,"bootstrap":{"startScn":1,"targetScn":2}}`:                         `"bootstrap" is set`,
		`{"v":1,"mode":"bootstrap_catchup","scn":0,"bootstrap":{"startScn":9,"targetScn":5}}`:              "before bootstrap.startScn",
		`{"v":1,"mode":"bootstrap_catchup","scn":10,"bootstrap":{"startScn":5,"targetScn":9,"store":"s"}}`: "outside the catch-up range",
		`{"v":1,"mode":"bootstrap_catchup","scn":7,"bootstrap":{"startScn":5,"targetScn":9}}`:              "store is missing",
		`{"v":1,"mode":"bootstrap_snapshot","scn":0,"bootstrap":{"startScn":5,"targetScn":9,"store":"s"}}`: "during a snapshot",
		`{"v":1,"mode":"bootstrap_snapshot","scn":0,"bootstrap":{"startScn":5,"targetScn":5,"after":"x"}}`: "store is missing",
	}
	for s, want := range bad {
		_, err := Parse([]byte(s))
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an ErrInvalid containing %q", s, err, want)
		}
	}
}

func TestFullHistory(t *testing.T) {
	c := FullHistory()
	if err := c.Validate(); err != nil || !c.IsNewBootstrap() {
		t.Fatalf("FullHistory() = %s: %v, new %v", c, err, c.IsNewBootstrap())
	}
	again, err := Parse([]byte(c.String()))
	if err != nil || !again.IsNewBootstrap() {
		t.Fatalf("FullHistory round trip: %s %v", again, err)
	}
	if At(3).IsNewBootstrap() {
		t.Fatal("an online checkpoint is a new bootstrap")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"v":1,"mode":"online","scn":12}`))
	f.Add([]byte(`{"v":1,"mode":"bootstrap_catchup","scn":7,"bootstrap":{"startScn":5,"targetScn":9,"store":"s"}}`))
	f.Add([]byte(`{"v":1,"mode":"bootstrap_snapshot","scn":0,"bootstrap":{"startScn":5,"targetScn":5,"store":"s","after":"AAAAAQ"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		again, err := Parse([]byte(c.String()))
		if err != nil {
			t.Fatalf("a parsed checkpoint does not parse again: %v", err)
		}
		if again.String() != c.String() {
			t.Fatalf("round trip changed %s into %s", c, again)
		}
	})
}
