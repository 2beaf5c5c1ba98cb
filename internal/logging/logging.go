// Package logging builds the logrus logger each role uses: JSON in
// production, text on a terminal, with the fields role, node and region.
package logging

import (
	"fmt"
	"io"
	"os"

	"github.com/sirupsen/logrus"
)

// New returns a logger writing to out. format is text, json or auto (text
// when out is a terminal). level is a logrus level name.
func New(out io.Writer, format, level, role, node, region string) (*logrus.Entry, error) {
	l := logrus.New()
	l.SetOutput(out)
	lvl, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	l.SetLevel(lvl)
	if format == "auto" {
		format = "json"
		if isTerminal(out) {
			format = "text"
		}
	}
	switch format {
	case "json":
		l.SetFormatter(&logrus.JSONFormatter{})
	case "text":
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	default:
		return nil, fmt.Errorf("log format %q: want text, json or auto", format)
	}
	return l.WithFields(logrus.Fields{"role": role, "node": node, "region": region}), nil
}

// Discard returns a logger that writes nothing, for tests that do not
// assert on logs.
func Discard() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
