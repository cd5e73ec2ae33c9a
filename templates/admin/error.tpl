% rebase('admin/base.tpl', title='Not found')
<h1>Sorry</h1>
<p>{{message}}</p>
