// Command compose-check loads a Compose file the way `docker compose
// config` does, with compose-go (the loader Docker Compose itself uses):
// schema validation, interpolation, normalization and consistency checks
// (depends_on targets, named volumes). It needs no Docker engine, so
// scripts/test can check docker-compose.yml on machines without one.
// Further files are overrides, merged in order as `docker compose -f A -f
// B` merges them.
//
//	go run . ../../docker-compose.yml [../../docker-compose.scaled.yml]
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
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check COMPOSE_FILE [OVERRIDE_FILE...]")
		os.Exit(2)
	}
	files := os.Args[1:]
	if err := check(files); err != nil {
		fmt.Fprintf(os.Stderr, "compose-check: %s: %v\n", strings.Join(files, " + "), err)
		os.Exit(1)
	}
}

func check(files []string) error {
	paths := make([]string, len(files))
	for i, file := range files {
		path, err := filepath.Abs(file)
		if err != nil {
			return err
		}
		paths[i] = path
	}
	options, err := cli.NewProjectOptions(
		paths,
		cli.WithWorkingDirectory(filepath.Dir(paths[0])),
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
	fmt.Printf("%s: project %q, services: %s\n", strings.Join(files, " + "),
		project.Name, strings.Join(project.ServiceNames(), ", "))
	return nil
}
