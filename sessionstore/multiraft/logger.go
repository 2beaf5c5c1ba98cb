package multiraft

import (
	"fmt"
	"log"
)

// quietLogger is the default raft.Logger: raft's debug and info chatter
// (one line per election per shard) is dropped, warnings and errors go to
// the standard logger, Fatal and Panic panic as raft expects.
type quietLogger struct{ prefix string }

func (l quietLogger) Debug(...any)          {}
func (l quietLogger) Debugf(string, ...any) {}
func (l quietLogger) Info(...any)           {}
func (l quietLogger) Infof(string, ...any)  {}
func (l quietLogger) Warning(v ...any)      { log.Print(l.prefix + fmt.Sprint(v...)) }
func (l quietLogger) Warningf(f string, v ...any) {
	log.Print(l.prefix + fmt.Sprintf(f, v...))
}
func (l quietLogger) Error(v ...any) { log.Print(l.prefix + fmt.Sprint(v...)) }
func (l quietLogger) Errorf(f string, v ...any) {
	log.Print(l.prefix + fmt.Sprintf(f, v...))
}
func (l quietLogger) Fatal(v ...any)            { panic(l.prefix + fmt.Sprint(v...)) }
func (l quietLogger) Fatalf(f string, v ...any) { panic(l.prefix + fmt.Sprintf(f, v...)) }
func (l quietLogger) Panic(v ...any)            { panic(l.prefix + fmt.Sprint(v...)) }
func (l quietLogger) Panicf(f string, v ...any) { panic(l.prefix + fmt.Sprintf(f, v...)) }
