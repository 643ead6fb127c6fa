"""The Kubernetes back end, by concern:

- :mod:`.contract`: the names gpuwarden writes and the API calls it may make (plain data);
- :mod:`.client`: building the client, and calling it in threads with deadlines and retries;
- :mod:`.node_marks` (pure planning) and :mod:`.actuator`: marking nodes;
- :mod:`.events`: one Event per fact;
- :mod:`.leader`: Lease leader election;
- :mod:`.pod_api`, :mod:`.governor`, :mod:`.governor_metrics`: task governance on pods;
- :mod:`.csr` and :mod:`.webhook`: agents' certificates and the admission webhook's CA bundle.

What these modules hand out holds no ``kubernetes`` types, so governance and the engine never
import the client.
"""
