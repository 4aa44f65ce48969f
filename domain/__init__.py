"""The shared vocabulary of cephnode: landmark names, result types, output kinds, job and
delivery states, measurement flags.

Every other room (inference, cephalometry, dicom_io, node, training) imports from here; this
package imports nothing else of cephnode, so the arrows between rooms run one way.
"""
