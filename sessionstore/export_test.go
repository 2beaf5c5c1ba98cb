package sessionstore

// Waiting counts the (session, stream) pairs that ReadEvents long-polls
// wait on.
func (n *Node) Waiting() int { return n.waiters.len() }
