"""kilo-lab: the test lab and the demo of kilo-py.

A lab is a set of network namespaces (nodes, peers, pods, control planes) on which the real
product runs: ``kg`` on every node, ``kgctl`` and ``kubectl`` from an admin namespace, a real
etcd + kube-apiserver per cluster. The lab drives the product only as a user would (API
objects, command lines, processes); the product never imports the lab. See docs/lab.md for the
module layout.
"""
