<table class="rows">
  <thead><tr><th>Received (UTC)</th><th>Status</th><th>From</th><th>Verdict</th><th>Body</th></tr></thead>
  <tbody>
  % for e in ipns:
  <tr><td data-label="Received (UTC)">{{e["received_at"][:19].replace("T", " ")}}</td><td data-label="Status">{{e["status"] or ""}}</td><td data-label="From">{{e["remote_addr"] or ""}}</td>
    <td data-label="Verdict" class="wide">{{e["verdict"]}}</td><td data-label="Body" class="wide"><details><summary>show</summary><pre>{{e["body"]}}</pre></details></td></tr>
  % end
  </tbody>
</table>
