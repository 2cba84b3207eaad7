// Command compose-check loads a Compose file the way `docker compose
// config` does, with compose-go (the loader Docker Compose itself uses):
// schema validation, interpolation, normalization and consistency checks
// (depends_on targets, named volumes). It needs no Docker engine, so
// scripts/test can check docker-compose.yml on machines without one.
//
//	go run . ../../docker-compose.yml
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check COMPOSE_FILE")
		os.Exit(2)
	}
	if err := check(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "compose-check: %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func check(file string) error {
	path, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	options, err := cli.NewProjectOptions(
		[]string{path},
		cli.WithWorkingDirectory(filepath.Dir(path)),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return err
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		return err
	}
	fmt.Printf("%s: project %q, services: %s\n", file, project.Name,
		strings.Join(project.ServiceNames(), ", "))
	return nil
}
