<table>
  <thead><tr><th>Received (UTC)</th><th>Status</th><th>From</th><th>Verdict</th><th>Body</th></tr></thead>
  <tbody>
  % for e in ipns:
  <tr><td>{{e["received_at"][:19].replace("T", " ")}}</td><td>{{e["status"] or ""}}</td><td>{{e["remote_addr"] or ""}}</td>
    <td>{{e["verdict"]}}</td><td><details><summary>show</summary><pre>{{e["body"]}}</pre></details></td></tr>
  % end
  </tbody>
</table>
