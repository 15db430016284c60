package main

import (
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/databus-go/databus/relay"
)

func newRelayCmd() *cobra.Command {
	var path string
	var check bool
	cmd := &cobra.Command{
		Use:   "relay --config FILE",
		Short: "Capture a source's committed changes and serve them over HTTP",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if path == "" {
				return usageError("relay needs --config FILE")
			}
			cfg, err := loadConfig(path, roleRelay)
			if err != nil {
				return err
			}
			if check {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: configuration is valid\n", path)
				return nil
			}
			src, err := cfg.openSource(slog.Default())
			if err != nil {
				return err
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			r, err := relay.New(cfg.Relay, src, slog.Default(), reg)
			if err != nil {
				src.Close()
				return err
			}
			return r.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "YAML configuration file (see README)")
	cmd.Flags().BoolVar(&check, "check-config", false, "validate the configuration and exit")
	return cmd
}

func usageError(format string, args ...any) error { return fmt.Errorf(format, args...) }
