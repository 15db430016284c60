package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

func TestConfigYAML(t *testing.T) {
	var doc struct {
		Relay Config `yaml:"relay"`
	}
	in := `
relay:
  listen: ":0"
  stateDir: /var/lib/databus
  buffer:
    maxBytes: 1GiB
  releaseInterval: 250ms
  authToken: s3cret
`
	if err := yaml.Unmarshal([]byte(in), &doc); err != nil {
		t.Fatal(err)
	}
	want := Config{Listen: ":0", StateDir: "/var/lib/databus", Buffer: BufferConfig{MaxBytes: GiB}, ReleaseInterval: 250 * time.Millisecond, AuthToken: "s3cret"}
	if d := cmp.Diff(want, doc.Relay); d != "" {
		t.Errorf("(-want +got)\n%s", d)
	}
	if err := doc.Relay.Validate(); err != nil {
		t.Error(err)
	}
	for text, want := range map[string]ByteSize{"maxBytes: 1048576": MiB, "maxBytes: 64MiB": 64 * MiB, `maxBytes: "2 GB"`: 2e9} {
		var b BufferConfig
		if err := yaml.Unmarshal([]byte(text), &b); err != nil || b.MaxBytes != want {
			t.Errorf("%s: %v, %v", text, b.MaxBytes, err)
		}
	}
	var b BufferConfig
	if err := yaml.Unmarshal([]byte("maxBytes: lots"), &b); err == nil {
		t.Error("maxBytes: lots was accepted")
	}
	for text, want := range map[string]ByteSize{`{"maxBytes":1024}`: KiB, `{"maxBytes":"3MiB"}`: 3 * MiB} {
		var b BufferConfig
		if err := json.Unmarshal([]byte(text), &b); err != nil || b.MaxBytes != want {
			t.Errorf("%s: %v, %v", text, b.MaxBytes, err)
		}
	}
}

func TestConfigDefaultsAndValidate(t *testing.T) {
	c := Config{StateDir: "s"}.WithDefaults()
	if c.Listen != "127.0.0.1:8080" || c.Buffer.MaxBytes != 64*MiB || c.ReleaseInterval != time.Second || c.AuthToken != "" {
		t.Errorf("defaults: %+v", c)
	}
	if err := (Config{StateDir: "s"}).Validate(); err != nil {
		t.Errorf("the defaults do not validate: %v", err)
	}
	for field, c := range map[string]Config{
		"listen":          {StateDir: "s", Listen: "localhost"},
		"listen ":         {StateDir: "s", Listen: "localhost:http"},
		"stateDir":        {},
		"buffer.maxBytes": {StateDir: "s", Buffer: BufferConfig{MaxBytes: KiB}},
		"releaseInterval": {StateDir: "s", ReleaseInterval: time.Millisecond},
		"authToken":       {StateDir: "s", AuthToken: "a b"},
	} {
		err := c.Validate()
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), strings.TrimSpace(field)) {
			t.Errorf("%s: Validate() = %v", field, err)
		}
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{
		"0": 0, "1": 1, "10B": 10, "1KiB": KiB, "64MiB": 64 * MiB, "64mib": 64 * MiB, "1 GiB": GiB, "2TiB": 2 * TiB,
		"1KB": 1000, "5MB": 5e6, "1GB": 1e9, " 7 ": 7,
	} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "1.5GiB", "MiB", "9999999999TiB", "1 PiB", "0x10"} {
		if got, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) = %v, want an error", in, got)
		}
	}
	for b, want := range map[ByteSize]string{0: "0B", 1: "1B", KiB: "1KiB", 64 * MiB: "64MiB", 3 * GiB: "3GiB", 1500: "1500B"} {
		if b.String() != want {
			t.Errorf("%d.String() = %q, want %q", int64(b), b.String(), want)
		}
		again, err := ParseByteSize(b.String())
		if err != nil || again != b {
			t.Errorf("round trip of %v: %v %v", b, again, err)
		}
	}
}

func TestSecretRedacted(t *testing.T) {
	c := Config{StateDir: "s", AuthToken: "hunter2"}
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("config", "cfg", c, "token", c.AuthToken)
	js, _ := json.Marshal(c)
	for what, s := range map[string]string{
		"%v": fmt.Sprintf("%v", c), "%+v": fmt.Sprintf("%+v", c), "%#v": fmt.Sprintf("%#v", c), "slog": logs.String(), "json": string(js),
	} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("%s shows the token: %s", what, s)
		}
	}
}
