% rebase('admin/base.tpl', title='Users', section='/admin/users')
<h1>Users</h1>
<form class="filters" method="get" action="/admin/users" hx-get="/admin/users" hx-target="#users" hx-trigger="input changed delay:300ms, submit" hx-push-url="true">
  <label>Telegram id, @username or name <input name="q" value="{{q}}" type="search"></label>
  <button type="submit">Search</button>
</form>
<div id="users">
% include('admin/_users.tpl')
</div>
