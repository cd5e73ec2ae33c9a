<table class="rows">
  <thead><tr><th>Telegram id</th><th>Name</th><th>Username</th><th class="num">Balance</th><th>Last seen (UTC)</th><th><span class="visually-hidden">Banned</span></th></tr></thead>
  <tbody>
  % for u in users:
  <tr><td class="key" data-label="Telegram id"><a href="/admin/users/{{u['id']}}">{{u["id"]}}</a></td><td data-label="Name">{{u["first_name"]}}</td><td data-label="Username">{{("@" + u["username"]) if u["username"] else ""}}</td>
    <td data-label="Balance" class="num">{{fmt(u["balance_cents"])}}</td><td data-label="Last seen (UTC)">{{u["last_seen_at"][:16].replace("T", " ")}}</td><td data-label="Banned" class="aside">{{"banned" if u["is_banned"] else ""}}</td></tr>
  % end
  % if not users:
  <tr><td colspan="6" class="muted">No users match.</td></tr>
  % end
  </tbody>
</table>
% if more:
<p><a class="button secondary" href="{{more}}" hx-get="{{more}}" hx-target="#users" hx-push-url="true">More users →</a></p>
% end
